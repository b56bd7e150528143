// ltc-stream web client: WebRTC video (receive only) + prompts and stats over one WebSocket.
// No dependencies, no build step. State for tests and tools is exposed as window.ltc.
(() => {
  "use strict";
  const params = new URLSearchParams(location.search);
  const kiosk = params.get("kiosk") === "1";
  const $ = (id) => document.getElementById(id);
  const video = $("video"), statusEl = $("status"), messageEl = $("message"), input = $("prompt");
  const CURATED = [
    "a yellow star spinning on a purple background",
    "a red ball rolls to the left over a blue sky",
    "a white square moving up on green and black stripes",
    "an orange triangle bouncing on a cyan background",
    "a pink circle orbiting over a black to blue gradient",
  ];
  // kiosk idle loop: after IDLE_MS without typing, a curated prompt every CYCLE_MS (?idle=S sets both)
  const idleParam = parseFloat(params.get("idle"));
  const IDLE_MS = idleParam > 0 ? idleParam * 1000 : 20000, CYCLE_MS = idleParam > 0 ? idleParam * 1000 : 12000;
  const state = window.ltc = {
    connected: false, acks: [], errors: [], stats: null, hello: null,
    receivedFps: 0, framesDecoded: 0, reconnects: 0, kiosk,
  };
  let ws = null, pc = null, refusal = null, retryMs = 500, lastTyped = Date.now(), lastCycle = 0, cycleIndex = 0;
  let lastFrames = 0, lastFramesAt = performance.now();
  const history = [];

  if (kiosk) {
    document.body.classList.add("kiosk");
    input.placeholder = "Type what you want to see…";
    const goFull = () => document.documentElement.requestFullscreen?.().catch(() => {});
    document.addEventListener("click", goFull, { once: true });
  }

  function show(text, isError = false) {
    messageEl.textContent = text;
    messageEl.classList.toggle("error", isError);
  }

  function send(obj) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj));
  }

  async function startWebRTC(iceServers) {
    if (pc) pc.close();
    pc = new RTCPeerConnection({ iceServers });  // the server's --ice-server list (STUN/TURN)
    state.iceServers = pc.getConfiguration().iceServers;
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (ev) => { video.srcObject = ev.streams[0] || new MediaStream([ev.track]); video.play().catch(() => {}); };
    pc.onconnectionstatechange = () => {
      if (pc && pc.connectionState === "failed") scheduleReconnect("video connection failed");
    };
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((resolve) => {  // aiortc wants the candidates inside the offer
      if (pc.iceGatheringState === "complete") return resolve();
      const check = () => { if (pc.iceGatheringState === "complete") { pc.removeEventListener("icegatheringstatechange", check); resolve(); } };
      pc.addEventListener("icegatheringstatechange", check);
      setTimeout(resolve, 3000);
    });
    send({ type: "offer", sdp: pc.localDescription.sdp });
  }

  function connect() {
    const proto = location.protocol === "https:" ? "wss" : "ws";
    ws = new WebSocket(`${proto}://${location.host}/ws`);
    ws.onopen = () => { state.connected = true; statusEl.textContent = "starting video…"; };
    ws.onmessage = (ev) => onMessage(JSON.parse(ev.data));
    ws.onclose = () => {
      state.connected = false;
      if (refusal && refusal.code === "origin_not_allowed") return;  // retrying cannot help
      scheduleReconnect(refusal ? refusal.message : "connection lost");
      refusal = null;
    };
  }

  let reconnectTimer = null;
  function scheduleReconnect(why) {
    if (reconnectTimer) return;
    statusEl.classList.remove("hidden");
    statusEl.textContent = `${why}; reconnecting…`;
    reconnectTimer = setTimeout(() => {
      reconnectTimer = null; state.reconnects += 1;
      if (pc) { pc.close(); pc = null; }
      if (ws && ws.readyState <= WebSocket.OPEN) ws.close();
      connect();
    }, retryMs);
    retryMs = Math.min(retryMs * 2, 8000);
  }

  function onMessage(msg) {
    switch (msg.type) {
      case "hello":  // the video starts once the server has said which ICE servers to use
        state.hello = msg;
        startWebRTC(msg.ice_servers || []).catch((e) => show(`WebRTC: ${e}`, true));
        $("now").textContent = msg.prompt || "";
        input.maxLength = msg.limits?.max_prompt_chars || 300;
        renderExamples(msg.model?.example_prompts || []);
        $("limits").hidden = msg.model?.name !== "default";  // the built-in toy says what it is
        break;
      case "answer":
        pc.setRemoteDescription({ type: "answer", sdp: msg.sdp }).catch((e) => show(`WebRTC: ${e}`, true));
        break;
      case "prompt_ack":
        state.acks.push(msg);
        $("now").textContent = msg.text;
        show(`“${msg.text}” takes effect at chunk ${msg.chunk}`);
        break;
      case "prompt_changed":
        $("now").textContent = msg.text;
        break;
      case "stats":
        state.stats = msg;
        $("ov-gen").textContent = msg.generation_fps.toFixed(1);
        $("ov-ltc").textContent = msg.ltc ? `on · ${msg.ltc_speedup.toFixed(2)}× (${msg.model_calls_per_chunk.toFixed(1)}/${msg.steps_per_chunk} calls)` : "off";
        $("ov-lat").textContent = msg.latency_ms == null ? "–" : `${Math.round(msg.latency_ms)} ms`;
        break;
      case "error":  // every error has a code; those below end the connection (the server closes it)
        state.errors.push(msg);
        show(msg.message, true);
        if (ENDING[msg.code]) { refusal = msg; statusEl.classList.remove("hidden"); statusEl.textContent = ENDING[msg.code]; }
        break;
      case "goodbye":
        state.errors.push(msg);
        refusal = msg;
        show(msg.message, true);
        break;
    }
  }

  const ENDING = {
    server_full: "the booth is full; retrying…",
    busy: "many people are connecting; retrying…",
    address_limit: "too many tabs open from this address; close one",
    origin_not_allowed: "this page may not connect to the booth (wrong origin)",
    offer_timeout: "the video could not start; retrying…",
    too_many_errors: "disconnected after too many refused messages; retrying…",
    stream_failed: "the model failed; starting a new stream…",
  };

  function submitPrompt(text, fromIdle = false) {
    text = text.trim();
    if (!text) return;
    send({ type: "prompt", text });
    if (!fromIdle) {
      const i = history.indexOf(text);
      if (i >= 0) history.splice(i, 1);
      history.unshift(text);
      history.length = Math.min(history.length, 12);
      renderHistory();
    }
  }

  // the model's own prompt ideas (hello.model.example_prompts), as buttons; the kiosk cycles them
  let ideas = CURATED;
  function renderExamples(prompts) {
    ideas = prompts.length ? prompts : CURATED;
    $("examples").replaceChildren(...prompts.map((text) => {
      const b = document.createElement("button");
      b.type = "button";
      b.textContent = text;
      b.onclick = () => { lastTyped = Date.now(); submitPrompt(text); };
      return b;
    }));
  }

  function renderHistory() {
    const list = $("history");
    list.replaceChildren(...history.map((text) => {
      const li = document.createElement("li");
      li.textContent = text;
      li.onclick = () => { input.value = text; submitPrompt(text); };
      return li;
    }));
  }

  $("prompt-form").addEventListener("submit", (ev) => { ev.preventDefault(); submitPrompt(input.value); input.value = ""; });
  input.addEventListener("input", () => { lastTyped = Date.now(); });

  async function pollStats() {
    if (pc) {
      const report = await pc.getStats();
      report.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "video") {
          const now = performance.now(), frames = s.framesDecoded || 0;
          state.framesDecoded = frames;
          if (now > lastFramesAt) state.receivedFps = ((frames - lastFrames) * 1000) / (now - lastFramesAt);
          lastFrames = frames; lastFramesAt = now;
        }
      });
      $("ov-fps").textContent = state.receivedFps.toFixed(1);
      if (state.framesDecoded > 0) { statusEl.classList.add("hidden"); retryMs = 500; }
    }
    if (kiosk && Date.now() - lastTyped > IDLE_MS && Date.now() - lastCycle > CYCLE_MS) {
      lastCycle = Date.now();
      submitPrompt(ideas[cycleIndex++ % ideas.length], true);
    }
  }
  setInterval(() => pollStats().catch(() => {}), 1000);
  connect();
})();
