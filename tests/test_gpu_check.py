"""experiments/gpu_check.sh --smoke: the GPU check's code paths (recipe, vmapped population, bf16) on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_smoke_writes_every_measurement(tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run(["bash", str(ROOT / "experiments/gpu_check.sh"), "--smoke", str(tmp_path)], check=True,
                   env=env, capture_output=True, timeout=600)
    lines = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    assert [line["case"] for line in lines] == ["recipe", "population", "dtype", "dtype"]
    recipe, population, *dtypes = lines
    assert all(line["smoke"] and line["machine"]["sgemm_gflops"] > 0 for line in lines)
    assert len(recipe["curve"]) == recipe["epochs"] and recipe["gflop_per_image"] > 0
    assert recipe["wall_seconds"] > 0 and recipe["images_per_second"] > 0
    # The population and the runs one after another train the same members on one data stream.
    assert population["members"] == len(population["sequential_images_per_second"]) == 2
    assert population["largest_accuracy_difference"] < 0.02
    assert {line["compute_dtype"] for line in dtypes} == {"bfloat16", "float32"}
    assert all(line["images_per_second"] > 0 and line["tflop_per_second"] >= 0 for line in dtypes)
