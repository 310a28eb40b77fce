"""Parallelism and GPU placement in ``models.toml``, passed through to vLLM's own engine arguments.

The CPU build cannot start a multi-GPU engine, but vLLM's config builder runs here: a
tensor x pipeline parallel spec with placed devices becomes vLLM's parallel config, world
size and physical GPU ids included. (A TP=1 engine starting and decoding is every engine test.)
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from serving.engine import engine_args
from serving.models import ModelsConfigError, ModelSpec, load_models_file


def _tiny(models_file: Path, **fields: object) -> ModelSpec:
    spec = load_models_file(models_file).get("bastion-tiny")
    return msgspec.convert(msgspec.to_builtins(spec) | fields, ModelSpec)


def _models(tmp_path: Path, models_file: Path, lines: str) -> Path:
    text = models_file.read_text()
    if "tensor_parallel_size" in lines:
        text = text.replace("tensor_parallel_size = 1\n", "", 1)
    text = text.replace('name = "bastion-tiny"\n', f'name = "bastion-tiny"\n{lines}\n', 1)
    out = tmp_path / "models.toml"
    out.write_text(text)
    return out


def test_an_engine_holds_tensor_x_pipeline_x_data_parallel_gpus(tmp_path: Path, models_file: Path) -> None:
    path = _models(
        tmp_path,
        models_file,
        'pipeline_parallel_size = 2\ndata_parallel_size = 2\ndistributed_executor_backend = "ray"',
    )
    spec = load_models_file(path).get("bastion-tiny")
    assert (spec.tensor_parallel_size, spec.pipeline_parallel_size, spec.data_parallel_size) == (1, 2, 2)
    assert spec.gpus == 4
    assert _tiny(models_file).gpus == 1


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ("devices = [0, 1]", "names 2 GPUs but the engine holds 1"),
        ("pipeline_parallel_size = 2\ndevices = [3, 3]", "lists a GPU twice"),
        ('distributed_executor_backend = "ray"\ndevices = [0]', "does not apply with the `ray` backend"),
        ('distributed_executor_backend = "uni"\npipeline_parallel_size = 2', "cannot hold 2 GPUs"),
        ('distributed_executor_backend = "slurm"', "distributed_executor_backend"),
        ("pipeline_parallel_size = 0", "pipeline_parallel_size"),
    ],
)
def test_impossible_placements_are_refused_naming_the_model(
    tmp_path: Path, models_file: Path, lines: str, message: str
) -> None:
    with pytest.raises(ModelsConfigError) as err:
        load_models_file(_models(tmp_path, models_file, lines))
    assert message in str(err.value)


def test_engine_args_carry_parallelism_and_placement(models_file: Path, tiny_model_dir: Path) -> None:
    spec = _tiny(
        models_file,
        tensor_parallel_size=2,
        pipeline_parallel_size=2,
        distributed_executor_backend="mp",
        devices=[3, 2, 1, 0],
    )
    args = engine_args(spec, tiny_model_dir)
    assert args["tensor_parallel_size"] == 2
    assert args["pipeline_parallel_size"] == 2
    assert args["data_parallel_size"] == 1
    assert args["distributed_executor_backend"] == "mp"
    assert args["device_ids"] == [3, 2, 1, 0]

    from vllm.engine.arg_utils import AsyncEngineArgs

    parallel = AsyncEngineArgs(**args).create_engine_config().parallel_config
    assert parallel.world_size == 4
    assert (parallel.tensor_parallel_size, parallel.pipeline_parallel_size) == (2, 2)
    assert parallel.distributed_executor_backend == "mp"
    assert parallel.assigned_physical_gpu_ids == [3, 2, 1, 0]


def test_a_single_gpu_model_leaves_placement_to_vllm(models_file: Path, tiny_model_dir: Path) -> None:
    args = engine_args(_tiny(models_file), tiny_model_dir)
    assert args["device_ids"] is None
    assert args["distributed_executor_backend"] is None
    sizes = ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size")
    assert [args[k] for k in sizes] == [1, 1, 1]


async def test_gpu_time_is_costed_for_every_gpu_the_engine_holds(tmp_path: Path, models_file: Path) -> None:
    """A tensor x pipeline parallel engine on 4 GPUs costs 4 GPU-seconds per second of its time."""
    from tests.harness import TINY, node_setup, running_node
    from tests.router.conftest import LocalEngine

    path = _models(tmp_path, models_file, "tensor_parallel_size = 2\npipeline_parallel_size = 2")
    setup = node_setup(tmp_path, audit=False, models_file=path)
    async with running_node(setup, {TINY: LocalEngine(TINY)}) as node:
        assert node.state.gpu_meters[TINY].gpus == 4
