"""The procedural video world the default model learns: simple shapes in named colours moving over
simple backgrounds, with captions written from templates and paraphrases.

Deterministic by seed and unlimited. Every scene carries its ground truth (colours, shape,
motion), which the fidelity evaluation checks generated videos against.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

# name -> (RGB in 0..255, paraphrases used in captions)
COLOURS: dict[str, tuple[tuple[int, int, int], tuple[str, ...]]] = {
    "red": ((220, 40, 40), ("red", "crimson", "scarlet")),
    "green": ((40, 180, 60), ("green", "emerald", "grass-green")),
    "blue": ((40, 80, 220), ("blue", "azure", "cobalt")),
    "yellow": ((240, 220, 40), ("yellow", "golden", "lemon")),
    "purple": ((140, 50, 190), ("purple", "violet", "plum")),
    "orange": ((245, 140, 30), ("orange", "tangerine", "amber")),
    "white": ((240, 240, 240), ("white", "snow-white", "pale")),
    "black": ((20, 20, 20), ("black", "dark", "jet-black")),
    "pink": ((240, 120, 180), ("pink", "rose", "salmon-pink")),
    "cyan": ((40, 200, 210), ("cyan", "turquoise", "teal")),
}
SHAPES: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "ball", "disc", "dot"),
    "square": ("square", "box", "block", "tile"),
    "triangle": ("triangle", "wedge", "pyramid"),
    "star": ("star", "starburst"),
}
# name -> (unit direction of travel in image coordinates (x right, y down), paraphrases)
MOTIONS: dict[str, tuple[tuple[float, float], tuple[str, ...]]] = {
    "left": ((-1.0, 0.0), ("moving left", "rolls to the left", "drifts leftward", "slides left", "heading left")),
    "right": ((1.0, 0.0), ("moving right", "rolls to the right", "drifts rightward", "slides right", "heading right")),
    "up": ((0.0, -1.0), ("moving up", "rises upward", "floats up", "climbs up", "heading up")),
    "down": ((0.0, 1.0), ("moving down", "falls downward", "sinks down", "drops down", "heading down")),
    "bouncing": ((0.0, 0.0), ("bouncing", "bouncing around", "hopping up and down", "bounces")),
    "orbiting": ((0.0, 0.0), ("orbiting", "circling around", "going round in circles", "orbits the centre")),
    "growing": ((0.0, 0.0), ("growing", "getting bigger", "growing and shrinking", "pulsing")),
    "spinning": ((0.0, 0.0), ("spinning", "rotating", "turning in place", "twirling")),
}
LINEAR_MOTIONS = ("left", "right", "up", "down")
SPEEDS: dict[str, tuple[float, tuple[str, ...]]] = {  # pixels per frame at 128x128
    "slow": (1.25, ("slowly", "gently", "lazily")),
    "normal": (2.25, ("",)),
    "fast": (3.5, ("quickly", "fast", "rapidly")),
}
BACKGROUND_KINDS = ("plain", "gradient", "stripes")
BACKGROUND_WORDS = {
    "plain": ("on a {a} background", "over a {a} sky", "against a plain {a} backdrop", "on {a}"),
    "gradient": ("over a {a} to {b} gradient", "on a background fading from {a} to {b}"),
    "stripes": ("on {a} and {b} stripes", "over a striped {a} and {b} background"),
}
ARTICLES = ("a", "one", "the")


@dataclass
class SceneObject:
    shape: str
    colour: str
    motion: str
    speed: str
    x0: float  # start position, fraction of the width
    y0: float  # start position, fraction of the height
    size: float  # radius, fraction of the smaller side
    phase: float  # start phase for periodic motions (radians)


@dataclass
class Scene:
    objects: list[SceneObject]
    background: str  # plain | gradient | stripes
    bg_colours: tuple[str, ...]  # one colour for plain, two otherwise
    seed: int = 0
    caption: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def main(self) -> SceneObject:
        return self.objects[0]


def _pick(rng: np.random.Generator, seq):
    return seq[int(rng.integers(len(seq)))]


def sample_scene(seed: int, *, max_objects: int = 2, two_object_rate: float = 0.2) -> Scene:
    """A random scene from `seed`: one object (sometimes two) over a background whose colours
    differ from the objects' so the scene is always readable."""
    rng = np.random.default_rng(seed)
    n_objects = 2 if (max_objects >= 2 and rng.random() < two_object_rate) else 1
    colour_names = list(COLOURS)
    bg_kind = _pick(rng, BACKGROUND_KINDS) if rng.random() < 0.5 else "plain"
    bg_first = _pick(rng, colour_names)
    bg = (bg_first,) if bg_kind == "plain" else (bg_first, _pick(rng, [c for c in colour_names if c != bg_first]))
    objects = []
    for _ in range(n_objects):
        used = set(bg) | {o.colour for o in objects}
        objects.append(
            SceneObject(
                shape=_pick(rng, list(SHAPES)),
                colour=_pick(rng, [c for c in colour_names if c not in used]),
                motion=_pick(rng, list(MOTIONS)),
                speed=_pick(rng, list(SPEEDS)),
                x0=float(rng.uniform(0.25, 0.75)),
                y0=float(rng.uniform(0.25, 0.75)),
                size=float(rng.uniform(0.13, 0.19)),
                phase=float(rng.uniform(0, 2 * math.pi)),
            )
        )
    scene = Scene(objects=objects, background=bg_kind, bg_colours=bg, seed=seed)
    scene.caption = caption(scene, rng)
    return scene


def caption(scene: Scene, rng: np.random.Generator | None = None) -> str:
    """A caption for `scene`; with `rng`, wording drawn from the paraphrases, else the plain form."""
    rng = rng or None

    def choose(options):
        return options[0] if rng is None else _pick(rng, options)

    parts = []
    for i, obj in enumerate(scene.objects):
        article = "a" if rng is None or i > 0 else choose(ARTICLES)
        speed_word = choose(SPEEDS[obj.speed][1]) if obj.motion in LINEAR_MOTIONS else ""
        words = [article, choose(COLOURS[obj.colour][1]), choose(SHAPES[obj.shape]), choose(MOTIONS[obj.motion][1])]
        if speed_word:
            words.append(speed_word)
        parts.append(" ".join(words))
    names = [choose(COLOURS[c][1]) for c in scene.bg_colours]
    template = choose(BACKGROUND_WORDS[scene.background])
    bg_text = template.format(a=names[0], b=names[-1])
    return " and ".join(parts) + " " + bg_text


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return xs + 0.5, ys + 0.5


def _background(scene: Scene, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    height, width = xs.shape
    a = np.array(COLOURS[scene.bg_colours[0]][0], np.float32)
    if scene.background == "plain":
        return np.broadcast_to(a, (height, width, 3)).copy()
    b = np.array(COLOURS[scene.bg_colours[1]][0], np.float32)
    if scene.background == "gradient":
        t = (ys / height)[..., None]
        return a * (1 - t) + b * t
    stripe = ((xs + ys) // max(4, width // 8) % 2)[..., None]  # diagonal stripes
    return np.where(stripe > 0, b, a)


def object_state(obj: SceneObject, t: float, height: int, width: int) -> tuple[float, float, float, float]:
    """Centre (px), radius (px) and rotation (rad) of `obj` at frame `t` (t may be fractional).

    Linear motions wrap around the frame so a stream can run forever."""
    scale = min(height, width) / 128.0
    speed = SPEEDS[obj.speed][0] * scale
    cx, cy = obj.x0 * width, obj.y0 * height
    radius = obj.size * min(height, width)
    angle = 0.0
    if obj.motion in LINEAR_MOTIONS:
        dx, dy = MOTIONS[obj.motion][0]
        span_x, span_y = width + 2 * radius, height + 2 * radius
        cx = (cx + dx * speed * t + radius) % span_x - radius
        cy = (cy + dy * speed * t + radius) % span_y - radius
    elif obj.motion == "bouncing":
        cy = height * 0.5 + abs(math.sin(obj.phase + 0.12 * t)) * -height * 0.3 + height * 0.15
    elif obj.motion == "orbiting":
        r = 0.25 * min(height, width)
        cx = width * 0.5 + r * math.cos(obj.phase + 0.09 * t)
        cy = height * 0.5 + r * math.sin(obj.phase + 0.09 * t)
    elif obj.motion == "growing":
        radius *= 1.0 + 0.45 * math.sin(obj.phase + 0.15 * t)
    elif obj.motion == "spinning":
        angle = obj.phase + 0.12 * t
    return cx, cy, radius, angle


def linear_velocity(obj: SceneObject) -> tuple[float, float]:
    """How far `obj`'s centre travels per frame as a fraction of the frame's (smaller) side, x right and
    y down: direction times speed for the linear motions, (0, 0) for the others (their centres do
    not travel one way). The same at every resolution: speeds scale with the frame's size."""
    if obj.motion not in LINEAR_MOTIONS:
        return 0.0, 0.0
    dx, dy = MOTIONS[obj.motion][0]
    speed = SPEEDS[obj.speed][0] / 128.0
    return dx * speed, dy * speed


def _polygon_coverage(xs, ys, cx, cy, vertices: np.ndarray) -> np.ndarray:
    """Soft inside-test of a convex or star polygon via the signed distance to its edges (1 px ramp)."""
    inside = np.zeros(xs.shape, bool)
    px, py = xs - cx, ys - cy
    n = len(vertices)
    # Even-odd crossing rule: works for the (non-convex) star too.
    for i in range(n):
        x1, y1 = vertices[i]
        x2, y2 = vertices[(i + 1) % n]
        cond = (y1 > py) != (y2 > py)
        xcross = (x2 - x1) * (py - y1) / (y2 - y1 + 1e-9) + x1
        inside ^= cond & (px < xcross)
    return inside.astype(np.float32)


def _shape_vertices(shape: str, radius: float, angle: float) -> np.ndarray:
    if shape == "triangle":
        k, radii = 3, [radius * 1.15] * 3
    elif shape == "star":
        k, radii = 10, [radius * 1.2 if i % 2 == 0 else radius * 0.5 for i in range(10)]
    else:  # square
        k, radii = 4, [radius * 1.25] * 4
    base = -math.pi / 2 + (math.pi / 4 if shape == "square" else 0.0)
    thetas = [base + angle + 2 * math.pi * i / k for i in range(k)]
    return np.array([(r * math.cos(th), r * math.sin(th)) for r, th in zip(radii, thetas)], np.float32)


def _coverage(obj: SceneObject, t: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    height, width = xs.shape
    cx, cy, radius, angle = object_state(obj, t, height, width)
    if obj.shape == "circle":
        d = np.hypot(xs - cx, ys - cy)
        return np.clip(radius - d + 0.5, 0.0, 1.0)
    return _polygon_coverage(xs, ys, cx, cy, _shape_vertices(obj.shape, radius, angle))


def render(scene: Scene, start: int, n_frames: int, height: int = 128, width: int = 128) -> np.ndarray:
    """Frames `start .. start+n_frames-1` of `scene` as uint8 RGB, shape [T, H, W, 3]."""
    xs, ys = _grid(height, width)
    background = _background(scene, xs, ys)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    for i in range(n_frames):
        img = background.copy()
        for obj in scene.objects:
            alpha = _coverage(obj, float(start + i), xs, ys)[..., None]
            img = img * (1 - alpha) + np.array(COLOURS[obj.colour][0], np.float32) * alpha
        frames[i] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return frames


def object_coverage(scene: Scene, start: int, n_frames: int, height: int = 128, width: int = 128) -> np.ndarray:
    """Where `render` draws objects: per frame and pixel, the largest object coverage in [0, 1],
    shape [T, H, W] float32 (training weights its loss towards these pixels)."""
    xs, ys = _grid(height, width)
    out = np.zeros((n_frames, height, width), np.float32)
    for i in range(n_frames):
        for obj in scene.objects:
            np.maximum(out[i], _coverage(obj, float(start + i), xs, ys), out=out[i])
    return out


# What the denoiser's text adapter learns to read from a caption (`Denoiser.attribute_logits`,
# trained with an auxiliary loss before the teacher): each attribute's classes, in order.
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "colour": tuple(COLOURS),
    "shape": tuple(SHAPES),
    "motion": tuple(MOTIONS),
    "speed": tuple(SPEEDS),  # "normal" for motions that are not linear (their captions name no speed)
    "background": BACKGROUND_KINDS,
    "background_colour": tuple(COLOURS),
    "background_colour_2": tuple(COLOURS),  # the first colour again for plain backgrounds
    "second_colour": ("none", *COLOURS),  # the second object's colour, if there is one
}


def scene_attributes(scene: Scene) -> list[int]:
    """`scene`'s class index for each of `ATTRIBUTES`, in order."""
    obj = scene.main
    values = {
        "colour": obj.colour,
        "shape": obj.shape,
        "motion": obj.motion,
        "speed": obj.speed if obj.motion in LINEAR_MOTIONS else "normal",
        "background": scene.background,
        "background_colour": scene.bg_colours[0],
        "background_colour_2": scene.bg_colours[-1],
        "second_colour": scene.objects[1].colour if len(scene.objects) > 1 else "none",
    }
    return [ATTRIBUTES[name].index(values[name]) for name in ATTRIBUTES]


def parse_caption(text: str) -> dict[str, str | None]:
    """Ground truth read back from a caption written by `caption` (used by tests and the
    evaluation): the first object's colour, shape, motion and the first background colour."""
    words = text.lower().replace(",", " ").split()
    joined = " " + " ".join(words) + " "

    def first_match(table: dict[str, tuple]) -> list[tuple[int, str]]:
        hits = []
        for name, entry in table.items():
            options = entry[1] if isinstance(entry, tuple) and isinstance(entry[1], tuple) else entry
            for option in options:
                if option and f" {option} " in joined:
                    hits.append((joined.index(f" {option} "), name))
        return sorted(hits)

    colours = first_match(COLOURS)
    shapes = first_match(SHAPES)
    motions = first_match(MOTIONS)
    return {
        "colour": colours[0][1] if colours else None,
        "shape": shapes[0][1] if shapes else None,
        "motion": motions[0][1] if motions else None,
        "background": colours[-1][1] if len(colours) > 1 else None,
    }
