"""The phase table: what differs between phases is read from its fields."""

from vaeflow_cli.runtime.phases import PHASES


def test_which_phases_run_the_glow_layer_follows_what_they_train_and_start_from():
    """Written out by hand from the paper's phases: phase 1 leaves the layer at the identity (not
    run); phase 2, joint and the standalone flow run it; a prior trained on phase 2 runs it and
    one trained on phase 1 does not; an unknown start is the phase's preferred one."""
    expected = {
        ("vae", None): False,
        ("glow", None): True,
        ("glow", "vae"): True,
        ("glow", "prior"): True,
        ("baseline", None): True,
        ("joint", None): True,
        ("joint", "glow"): True,
        ("prior", None): True,
        ("prior", "glow"): True,
        ("prior", "vae"): False,
    }
    assert {key: PHASES[key[0]].uses_flow(key[1]) for key in expected} == expected


def test_each_phase_that_continues_another_has_a_start_note_and_one_phase_is_standalone():
    for phase in PHASES.values():
        assert bool(phase.start_note) == bool(phase.starts_from), phase.name
    assert [p.name for p in PHASES.values() if p.standalone] == ["baseline"]
    assert PHASES["prior"].start_note.format(start=PHASES["glow"].title) == "start of prior training (from phase 2)"
