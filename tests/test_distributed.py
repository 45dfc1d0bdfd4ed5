"""mlux on sharded models (issue 17): pipeline (`model.model.pipeline`) and tensor-parallel
(`model.shard`) models wrapped by `HookedModel`, captured, steered and decoded.

The layout is checked in process with a stand-in group; the real thing runs 2 ranks on localhost
with `mlx.launch --backend ring` (tests/dist_worker.py) and compares every rank's results with a
single-process run of the same tiny model: tokens equal, activations equal (pipeline: exactly,
since the owner's values travel unchanged; tensor parallel: within 1e-3, the sharded matmuls sum
in another order).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

import mlux
from mlux.distributed import Sharding, detect_sharding, is_main_process
from mlux.testing import make_tiny_model, save_tiny_model

WORKER = Path(__file__).with_name("dist_worker.py")
LAUNCH = shutil.which("mlx.launch")
TIMEOUT = 120


class FakeGroup:
    """Enough of an mx.distributed group for `PipelineMixin.pipeline` (no collectives)."""

    def __init__(self, rank: int, size: int):
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def _pipelined(rank: int, size: int = 2) -> mlux.HookedModel:
    model, _ = make_tiny_model("qwen2")  # 4 layers
    model.model.pipeline(FakeGroup(rank, size))
    return mlux.HookedModel(model, group=FakeGroup(rank, size))


@pytest.mark.parametrize("rank,local", [(0, [2, 3]), (1, [0, 1])])
def test_pipeline_layout_keeps_global_numbering(rank, local):
    hooked = _pipelined(rank)
    assert hooked.num_layers == 4 and hooked.local_layers == local
    assert hooked.sharding.kind == "pipeline" and hooked.sharding.local_layers == local
    assert len(hooked.hook_points) == 12  # every block's points, local or not
    blocks = hooked.arch.blocks
    assert all(type(blocks[i]).__name__ == "HookWrapper" for i in local)
    assert all(blocks[i] is None for i in range(len(blocks)) if i not in local)
    # hooks anywhere are accepted; only the local ones are installed (the owner runs the others)
    with hooked.hooks({"all": lambda x, ctx: x, "mlp_all": lambda x, ctx: x}):
        assert sorted(hooked.active_hooks()) == sorted(
            f"{k}_{i}" for i in local for k in ("residuals", "mlp"))
    assert hooked.active_hooks() == {}
    with pytest.raises(ValueError, match="out of range|valid range|residuals_7"):
        hooked.expand_layer_specs("residuals_7")
    hooked.unwrap()
    assert all(type(blocks[i]).__name__ != "HookWrapper" for i in local)


def test_pipeline_group_mismatch_is_a_clear_error():
    model, _ = make_tiny_model("qwen2")
    model.model.pipeline(FakeGroup(0, 2))
    with pytest.raises(ValueError, match="pipeline-sharded over 2 ranks.*group="):
        mlux.HookedModel(model, group=FakeGroup(0, 3))


def test_whole_model_is_not_sharded_and_world_of_one_is_main():
    model, _ = make_tiny_model("llama")
    hooked = mlux.HookedModel(model)
    assert hooked.sharding is None and hooked.local_layers == [0, 1, 2, 3]
    assert detect_sharding(model, hooked.arch.blocks_owner, hooked.arch.blocks) is None
    assert is_main_process()


def test_gather_and_broadcast_in_a_world_of_one():
    group = mx.distributed.init()
    sh = Sharding("pipeline", group, [0])
    x = mx.arange(6, dtype=mx.float32).reshape(1, 2, 3).astype(mx.bfloat16)
    out = sh.gather(["a", "b"], {"a": x, "b": mx.ones((2,))})
    assert out["a"].dtype == mx.bfloat16 and mx.array_equal(out["a"], x).item()
    assert mx.array_equal(out["b"], mx.ones((2,))).item()
    assert sh.broadcast(mx.array([3, 4])).tolist() == [3, 4]
    with pytest.raises(RuntimeError, match=r"\['c'\] are held by \[0\] ranks"):
        sh.gather(["c"], {})


# -- real 2-rank runs ---------------------------------------------------------------------------

def _run(cmd: list[str], cwd: Path) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{' '.join(cmd)} timed out after {TIMEOUT} s:\n{e.stderr}")
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")


def _results(prefix: Path, rank: int) -> tuple[dict, dict]:
    meta = json.loads(Path(f"{prefix}.rank{rank}.json").read_text())
    with np.load(f"{prefix}.rank{rank}.npz") as z:
        return meta, {k: z[k] for k in z.files}


@pytest.fixture(scope="module", params=[("qwen2", "pipeline"), ("llama", "tensor")],
                ids=["pipeline-qwen2", "tensor-llama"])
def two_ranks(request, tmp_path_factory):
    if LAUNCH is None:
        pytest.skip("mlx.launch is not on PATH (it comes with the mlx package)")
    model_type, mode = request.param
    root = tmp_path_factory.mktemp(f"dist_{mode}")
    path = save_tiny_model(root / "model", model_type)
    assert (path / "model.safetensors.index.json").exists()  # sharded_load needs it
    _run([sys.executable, str(WORKER), str(path), "none", str(root / "single")], root)
    _run([LAUNCH, "--backend", "ring", "-n", "2", "--python", sys.executable, str(WORKER),
          str(path), mode, str(root / "dist")], root)
    single = _results(root / "single", 0)
    return mode, single, [_results(root / "dist", r) for r in (0, 1)]


def test_two_ranks_match_one_process(two_ranks):
    mode, (meta1, acts1), ranks = two_ranks
    (meta_a, _), (meta_b, _) = ranks
    if mode == "pipeline":  # rank 0 runs the last blocks
        assert (meta_a["local_layers"], meta_b["local_layers"]) == ([2, 3], [0, 1])
    else:
        assert meta_a["local_layers"] == meta_b["local_layers"] == [0, 1, 2, 3]
    tol = 0.0 if mode == "pipeline" else 1e-3
    for meta, acts in ranks:
        assert meta["sharding"] == mode and meta["num_layers"] == 4
        assert meta["hook_points"] == meta1["hook_points"]
        # captured residuals at every layer (+ attention, MLP, reduced, with logits, vectors)
        assert sorted(acts) == sorted(acts1)
        for k in acts1:
            np.testing.assert_allclose(acts[k], acts1[k], rtol=tol, atol=tol, err_msg=k)
        # greedy tokens, steered and plain, from the cache and from compare()
        for key in ("steered", "plain", "compare"):
            assert meta[key] == meta1[key], key
    # unseeded sampling differs from the single run, but every rank has rank 0's tokens
    assert meta_a["sampled"] == meta_b["sampled"]
