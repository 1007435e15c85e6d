"""``--max-steps``: a smoke test of a config from the command line (both phases, a sample grid and the
held-out bound in seconds), and ``--restart``."""

from __future__ import annotations

import torch
from conftest import call_main

from vaeflow_cli.runtime.runs import RunDir

QUICK = ["--set", "train.threads=1", "--set", "train.eval_samples=8"]


def stopped_phase1(tiny_config, run, option: str, value: str, capsys) -> str:
    """Phase 1 of ``tiny_config`` trained into RUN with a stop option (``--max-steps N`` or
    ``--max-seconds S``), which succeeds and prints the run; the line of stderr that says where it
    stopped."""
    code, out, err = call_main(["train-vae", "--config", tiny_config, "--run", run, option, value, *QUICK], capsys)
    assert code == 0 and out.strip() == str(run), err
    return next(x for x in err.splitlines() if option in x)


def assert_phase1_matches_an_uninterrupted_run(tiny_config, run, clean, capsys) -> dict:
    """Phase 1 of ``tiny_config`` trained in one go into CLEAN has the weights of RUN's phase-1
    checkpoint; returns that checkpoint."""
    assert call_main(["train-vae", "--config", tiny_config, "--run", clean, *QUICK], capsys)[0] == 0
    a, b = RunDir(run).load_checkpoint("vae"), RunDir(clean).load_checkpoint("vae")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    return a


def test_the_commands_that_messages_suggest_paste_into_a_shell_as_written(tiny_config, tmp_path, capsys):
    import shlex

    run = tmp_path / "my \u00fc run"  # a space and a non-ASCII letter: the path is one quoted shell word
    line = stopped_phase1(tiny_config, run, "--max-steps", "1", capsys)
    hint = line.split("continue with: ")[1].rstrip(")")
    assert shlex.split(hint) == ["vaeflow", "train-vae", "--run", str(run), "--resume"], hint
    code, _, err = call_main(["train-glow", "--run", run, "--resume", *QUICK], capsys)
    assert code == 2 and "is not finished" in err
    assert shlex.split(err.strip().split("; run ")[-1]) == ["vaeflow", "train-vae", "--run", str(run), "--resume"], err


def test_max_steps_smoke_tests_both_phases_and_resume_continues_exactly(tiny_config, tmp_path, capsys):
    run, clean = tmp_path / "run", tmp_path / "clean"
    line = stopped_phase1(tiny_config, run, "--max-steps", "2", capsys)
    assert line.startswith("vae stopped after 2 steps (--max-steps) at epoch 1 step 2: train loss ") and "held-out bound <= " in line
    assert "on 8 images" in line and f"continue with: vaeflow train-vae --run {run} --resume" in line
    assert (run / "samples" / "vae-step000000002.png").is_file()
    state = RunDir(run).load_checkpoint("vae")
    assert state["global_step"] == 2 and not state["complete"]

    # phase 2's smoke test starts from the unfinished phase 1; without --max-steps it is refused
    code, out, err = call_main(["train-glow", "--run", run, "--max-steps", "1", *QUICK], capsys)
    assert code == 0 and "phase 2 starts from an unfinished phase 1 (epoch 0/2, step 2): a smoke test (--max-steps)" in err
    assert "glow stopped after 1 step (--max-steps)" in err and (run / "samples" / "glow-step000000001.png").is_file()
    code, _, err = call_main(["train-glow", "--run", run, "--resume", *QUICK], capsys)
    assert code == 2 and "phase 1 of" in err and "is not finished" in err
    code, out, _ = call_main(["sample", "--run", run, "--n", "2", "--out", tmp_path / "s.png"], capsys)
    assert code == 0

    # --resume continues phase 1 exactly: the weights of one uninterrupted run
    assert call_main(["train-vae", "--run", run, "--resume", *QUICK], capsys)[0] == 0
    resumed = assert_phase1_matches_an_uninterrupted_run(tiny_config, run, clean, capsys)
    assert resumed["complete"]
    # and the smoke run of phase 2 now sits on an older phase 1: say so, train it again
    code, _, err = call_main(["train-glow", "--run", run, "--resume", *QUICK], capsys)
    assert code == 2 and "was trained on phase 1 at step 2" in err and f"vaeflow train-glow --run {run} --restart" in err
    code, _, err = call_main(["train-glow", "--run", run, "--restart", *QUICK], capsys)
    assert code == 0 and "restarting phase 2" in err


def test_restart_and_resume_together_and_a_bad_max_steps_are_usage_errors(tiny_config, tmp_path, capsys):
    code, _, err = call_main(["train-vae", "--config", tiny_config, "--run", tmp_path / "r", "--resume", "--restart"], capsys)
    assert code != 0 and "not both" in err and len(err.strip().splitlines()) == 1
    code, _, err = call_main(["train-vae", "--config", tiny_config, "--run", tmp_path / "r", "--max-steps", "0"], capsys)
    assert code == 2 and "--max-steps" in err
    assert not (tmp_path / "r").exists()


def test_max_seconds_is_a_time_budget_that_stops_at_a_step_and_resumes_exactly(tiny_config, tmp_path, capsys):
    from vaeflow_cli.config import core as config_mod
    from vaeflow_cli.training.loop import train_phase

    run, clean = tmp_path / "run", tmp_path / "clean"
    line = stopped_phase1(tiny_config, run, "--max-seconds", "0.001", capsys)
    assert line.startswith("vae stopped after ") and "1 step (--max-seconds 0.001) at epoch 1 step 1" in line
    assert RunDir(run).load_checkpoint("vae")["global_step"] == 1
    cfg = config_mod.resolve(tiny_config, ["train.threads=1", "train.eval_samples=8"])
    result = train_phase(cfg, run, "vae", resume=True, progress=False, max_seconds=1e6)
    assert result.complete and result.seconds > 0
    assert result.steps == RunDir(run).load_checkpoint("vae")["global_step"] - 1 > 0  # the steps this call took
    assert_phase1_matches_an_uninterrupted_run(tiny_config, run, clean, capsys)
    code, _, err = call_main(["train-vae", "--config", tiny_config, "--run", tmp_path / "x", "--max-seconds", "0", *QUICK], capsys)
    assert code == 2 and "--max-seconds" in err


def test_max_seconds_nan_or_inf_is_not_a_finite_number_and_out_of_range_says_the_range(tiny_config, tmp_path, capsys):
    for value, words in (
        ("nan", "nan is not a finite number in [0.001, 1e9]"),
        ("inf", "inf is not a finite number in [0.001, 1e9]"),
        ("-inf", "-inf is not a finite number"),
        ("2e9", "2e9 is not in [0.001, 1e9]"),
        ("0", "0 is not in [0.001"),
        ("1e400", "1e400 is not a finite number in [0.001, 1e9]"),  # the text as given, not float()'s inf
        ("ten", "'ten' is not a number"),
    ):
        code, out, err = call_main(["train-vae", "--config", tiny_config, "--run", tmp_path / "x", "--max-seconds", value, *QUICK], capsys)
        lines = err.strip().splitlines()
        assert code == 2 and out == "" and len(lines) == 1 and "--max-seconds" in lines[0] and words in lines[0], err
        assert "less than or equal" not in err and not (tmp_path / "x").exists()
