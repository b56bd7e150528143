"""benchmarks/pool_fidelity.py: disjoint stretches of held-out prompts pooled into one figure."""
import json
import subprocess
import sys
from pathlib import Path

from ltc_stream.models.default.evaluate import held_out_scenes

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "pool_fidelity.py"


def report(tmp_path, name, first, passes):
    """A report of held-out prompts `first` onwards whose k-th prompt passed `passes[k]` of its checks."""
    rows = []
    for scene, n in zip(held_out_scenes(len(passes), first), passes):
        checks = {"background": n >= 1, "object": n >= 2}
        rows.append({"caption": scene.caption, "checks": checks, "seen": {}})
    path = tmp_path / name
    path.write_text(json.dumps({"fidelity": {"first_prompt": first, "per_prompt": rows}}))
    return str(path)


def pool(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def test_pools_checks_not_stretch_means_and_refuses_overlaps_and_wrong_prompts(tmp_path):
    a = report(tmp_path, "a.json", 0, [2, 0, 1, 2])  # 5 of 8 checks
    b = report(tmp_path, "b.json", 10, [2, 2])  # 4 of 4
    probe = tmp_path / "arms.json"  # a results file's arm, as the probes keep them
    probe.write_text(json.dumps({"arms": {"x": {"first": 20, "per_prompt": json.loads(Path(b).read_text())["fidelity"]["per_prompt"]}}}))
    out = pool(a, b, "--output", str(tmp_path / "p.json"))
    assert out.returncode == 0, out.stderr
    pooled = json.loads((tmp_path / "p.json").read_text())["pooled"]
    assert (pooled["prompts"], pooled["checks"], pooled["accuracy"]) == (6, 12, round(9 / 12, 4))
    assert pooled["ci95"][0] <= pooled["accuracy"] <= pooled["ci95"][1]
    assert [s["accuracy"] for s in json.loads(out.stdout)["stretches"]] == [0.625, 1.0]
    overlap = pool(a, report(tmp_path, "c.json", 3, [1]))
    assert overlap.returncode == 2 and "overlaps" in overlap.stderr
    wrong = pool(f"{probe}:x")  # rows of prompts 10-11 claimed as 20-21
    assert wrong.returncode == 2 and "are not the held-out prompts" in wrong.stderr
