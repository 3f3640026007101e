"""A rank killed with SIGKILL during checkpoint.save leaves the previous
checkpoint loadable (and loading it at another number of ranks works)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mpirun import launch

SCRIPT = os.path.join(os.path.dirname(__file__), "fault_scripts", "checkpoint_kill.py")


def expected_first_checkpoint():
    """The parameters and Adam state the script saved first, rebuilt here."""
    from distml import optim

    rng = np.random.default_rng(7)
    params = [rng.standard_normal((37, 5)), rng.standard_normal(11)]
    opt = optim.Adam(params, lr=0.1)
    opt.step([np.ones_like(p) for p in params])
    return params, opt


@pytest.mark.parametrize("P,where", [(2, "shard"), (2, "commit"), (3, "shard")])
def test_kill_during_save_keeps_previous_checkpoint(tmp_path, P, where):
    from distml import checkpoint, optim

    directory = str(tmp_path / "ckpt")
    result = launch(P, [SCRIPT, directory, where], timeout=120)
    assert not result.hung, result.describe()
    assert result.returncode != 0, "the job should have ended with the killed rank\n" + result.describe()
    assert "the kill did not happen" not in result.stdout

    want_params, want_opt = expected_first_checkpoint()
    params = [np.zeros_like(p) for p in want_params]
    opt = optim.Adam(params, lr=0.1)
    checkpoint.load(directory, params=params, optimizer=opt)  # one process: resharded from P
    for got, want in zip(params, want_params):
        np.testing.assert_array_equal(got, want)
    got_state, want_state = opt.state_dict(), want_opt.state_dict()
    assert got_state["steps"] == want_state["steps"]
    for got, want in zip(got_state["state"], want_state["state"]):
        assert set(got) == set(want) and set(want) >= {"exp_avg", "exp_avg_sq"}
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
