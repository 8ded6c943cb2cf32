"""What a run is built from: precision and DeepSpeed come from the run config alone."""
from pathlib import Path

import pytest

from depthpi.config import load_config
from depthpi.train.accelerator import check_launcher_settings, deepspeed_plugin, make_accelerator, resolve_precision

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo"


def _cfg(tmp_path, *overrides):
    return load_config(DEMO / "baseline_rgb.yaml", [f"run.out_dir={tmp_path}", *overrides])


def test_precision_auto_is_bf16_on_a_gpu_and_fp32_on_a_cpu(tmp_path):
    auto = _cfg(tmp_path, "run.precision=auto")
    assert resolve_precision(auto, on_cpu=False) == "bf16" and resolve_precision(auto, on_cpu=True) == "fp32"
    assert resolve_precision(_cfg(tmp_path, "run.precision=fp16"), on_cpu=False) == "fp16"


def test_the_launchers_mixed_precision_is_reported_and_not_used(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")  # accelerate launch --mixed_precision fp16
    accelerator = make_accelerator(_cfg(tmp_path, "run.precision=fp32", "run.log_with=[]"))
    assert accelerator.mixed_precision == "no"
    assert "mixed precision 'fp16' is not used: config key run.precision decides (fp32)" in caplog.text


def test_deepspeed_asked_for_by_the_launcher_alone_is_refused_naming_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # accelerate launch --use_deepspeed
    with pytest.raises(ValueError, match=r"'run.deepspeed.zero_stage' is 0.*run.deepspeed.zero_stage=1 or 2"):
        check_launcher_settings(_cfg(tmp_path), "fp32")
    check_launcher_settings(_cfg(tmp_path, "run.deepspeed.zero_stage=2"), "fp32")  # both agree: fine


def test_the_deepspeed_plugin_is_built_from_the_run_config(tmp_path):
    pytest.importorskip("deepspeed")
    pytest.importorskip("transformers")
    assert deepspeed_plugin(_cfg(tmp_path)) is None  # zero_stage 0: DDP
    plugin = deepspeed_plugin(_cfg(tmp_path, "run.deepspeed.zero_stage=2", "run.deepspeed.offload_optimizer=cpu",
                                   "optim.grad_clip=3.0", "data.batch_size=12"))
    config = plugin.deepspeed_config
    assert plugin.zero_stage == 2 and config["train_micro_batch_size_per_gpu"] == 12
    assert plugin.gradient_clipping == 3.0 and config["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "torch_autocast" not in config  # fp32
    bf16 = deepspeed_plugin(_cfg(tmp_path, "run.deepspeed.zero_stage=1"), "bf16").deepspeed_config
    assert bf16["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and not bf16.get("bf16", {}).get("enabled")
    with pytest.raises(ValueError, match="fp16 with run.deepspeed.zero_stage"):
        deepspeed_plugin(_cfg(tmp_path, "run.deepspeed.zero_stage=1"), "fp16")
    with pytest.raises(ValueError, match="run.deepspeed.zero_stage"):
        _cfg(tmp_path, "run.deepspeed.zero_stage=3")


def test_accelerate_configs_carry_no_field_the_run_config_owns():
    import yaml

    for path in (Path(__file__).resolve().parents[1] / "configs" / "accelerate").glob("*.yaml"):
        fields = set(yaml.safe_load(path.read_text()))
        assert not fields & {"mixed_precision", "deepspeed_config"}, path.name
        assert yaml.safe_load(path.read_text())["distributed_type"] != "DEEPSPEED", path.name
