"""bench/gpu_check.sh end to end on the CPU with tiny sizes: every stage runs, and the summary
line carries the device, the torch version and every figure; a failing stage is one line."""
import re

import torch

from tests.long_runs import GPU_CHECK_TINY as TINY, gpu_check


def test_the_gpu_check_runs_every_stage_on_the_cpu_and_sums_up_in_one_line(gpu_check_cpu):
    result, work = gpu_check_cpu.result, gpu_check_cpu.work
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("gpu_check: device cpu (") and f"torch {torch.__version__}" in lines[0]
    for stage in ("pipeline, tiny", "training step, tiny configuration", "generation, 4 pieces of 16 codes",
                  "traced steps"):
        assert any(line.startswith(f"gpu_check: {stage}") for line in lines), stage
    summary = lines[-1]
    assert summary.startswith("gpu_check ok: ") and summary.endswith('"')
    fields = dict(re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", summary))
    assert fields["device"] == "cpu" and fields["torch"] == torch.__version__ and fields["preset"] == "tiny"
    assert (fields["train_batch"], fields["gen_pieces"], fields["gen_steps"]) == ("2", "4", "16")
    for key in ("pipeline_s", "step_fp32_s", "step_bf16_s", "gen_s", "pieces_per_s", "traced_ms_per_step",
                "eager_ms_per_step"):
        assert float(fields[key]) > 0, key
    # On the CPU a traced step replays the eager step's kernels: the same numbers, the same pieces.
    assert float(fields["traced_diff"]) == 0 and fields["traced_identical"] == "2/2"
    for script in ("MusER", "Prior_train", "generate", "compute_metrics", "element_transfer"):
        assert (work / "logs" / f"{script}.log").exists()
    assert (work / "generated" / "check_data.data").exists()


def test_a_failing_stage_ends_the_check_with_one_error_line(tmp_path):
    result = gpu_check(*TINY[:4], "--epochs", "0", work=tmp_path / "work")      # MusER.py refuses --Epoch 0
    assert result.returncode == 1
    assert "gpu_check ok" not in result.stdout
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("gpu_check error: pipeline: MusER: UserError: --Epoch must be at least 1")
