"""Freeze-thaw with many worker processes, as users run them, two of them killed mid-run.

PostgreSQL (8 workers) with Optuna's heartbeat and retry callback, and a journal file (4
workers). Checks afterwards: every trial finished, no paused trial continued twice, each
continuation restored its parent's weights bit for bit, every recorded checkpoint has its file.
"""

from __future__ import annotations

import collections
import multiprocessing
import os
from pathlib import Path
import random
import signal
import time

import optuna
from optuna.trial import TrialState
import workers

import optuna_fms
from optuna_fms import _attrs
from optuna_fms import _claims


_TARGET = 400
"""Complete or pruned trials the workers run together."""


def _running_by_worker(storage, study_id: int) -> dict[int, list]:
    out: dict[int, list] = collections.defaultdict(list)
    for t in storage.get_all_trials(study_id, states=(TrialState.RUNNING,)):
        out[t.user_attrs.get("worker", -1)].append(t)
    return out


def _n_finished(study: optuna.Study) -> int:
    states = (TrialState.COMPLETE, TrialState.PRUNED)
    return len(study._storage.get_all_trials(study._study_id, deepcopy=False, states=states))


def _fail_as_the_heartbeat_would(study: optuna.Study, trials: list) -> None:
    """What ``fail_stale_trials`` does with a retry callback, for storages without heartbeat."""
    retry = workers.retry_callback()
    for t in trials:
        try:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        retry(study, study._storage.get_trial(t._trial_id))


def _run_fleet(spec: str, tmp_path: Path, n_workers: int, seed: int) -> optuna.Study:
    """Run ``n_workers`` processes to :data:`_TARGET` trials; kill two at random moments (while
    they run a trial, a continuation when one is running) and start replacements."""
    name = f"fleet-{seed}-{time.time_ns()}"
    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    optuna.create_study(study_name=name, storage=workers.make_storage(spec), direction="minimize")
    study = workers.fleet_study(spec, name, str(artifacts), seed=seed + 10_000)
    heartbeat = not spec.startswith("journal:")
    # Workers fork from a server that imported torch once (8 fresh interpreters importing it
    # would take most of the test's time on 2 cores) and never opened a connection.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["workers"])

    def start(worker_seed: int) -> multiprocessing.process.BaseProcess:
        args = (spec, name, str(artifacts), worker_seed, _TARGET)
        p = ctx.Process(target=workers.fleet_worker, args=args, daemon=True)
        p.start()
        return p

    procs = [start(seed * 100 + i) for i in range(n_workers)]
    rng = random.Random(seed)
    # Random moments, counted in finished trials (so they fall mid-run on any machine).
    kills = sorted(rng.sample(range(_TARGET // 8, _TARGET * 3 // 4), 2))
    killed: list[dict] = []
    for k, at in enumerate(kills):
        while _n_finished(study) < at:
            if not all(p.is_alive() for p in procs):
                errors = [f.read_text() for f in sorted(tmp_path.glob("worker-*.err"))]
                raise AssertionError(f"a worker exited early: {errors}")
            time.sleep(0.1)
        # A worker in the middle of a trial; one running a continuation if any is.
        deadline = time.monotonic() + 10
        victim = None
        while victim is None and time.monotonic() < deadline:
            running = _running_by_worker(study._storage, study._study_id)
            alive = {p.pid: p for p in procs if p.is_alive()}
            held = {pid: ts for pid, ts in running.items() if pid in alive}
            continuing = [
                pid
                for pid, ts in held.items()
                if any(_attrs.read_continuation(t.user_attrs) for t in ts)
            ]
            pool = sorted(continuing or held)
            if pool and (continuing or time.monotonic() > deadline - 5):
                victim = alive[rng.choice(pool)]
            else:
                time.sleep(0.02)
        assert victim is not None, "no worker was running a trial"
        os.kill(victim.pid, signal.SIGKILL)
        victim.join()
        held = _running_by_worker(study._storage, study._study_id).get(victim.pid, [])
        killed.append({"pid": victim.pid, "trials": [t.number for t in held]})
        if not heartbeat:
            _fail_as_the_heartbeat_would(study, held)
        procs[procs.index(victim)] = start(seed * 100 + n_workers + k)
    for p in procs:
        p.join(timeout=300)
        errors = [f.read_text() for f in sorted(tmp_path.glob("worker-*.err"))]
        assert p.exitcode == 0, (p.exitcode, errors)
    # Killed trials not yet failed by a worker's heartbeat check: past the grace period, fail
    # them (the retry callback re-enqueues them) and run what is left, as a last worker would.
    if heartbeat:
        time.sleep(workers.FLEET_GRACE + 1)
        optuna.storages.fail_stale_trials(study)
    else:
        orphans = _running_by_worker(study._storage, study._study_id)
        _fail_as_the_heartbeat_would(study, [t for ts in orphans.values() for t in ts])
    waiting = study._storage.get_all_trials(study._study_id, states=(TrialState.WAITING,))
    study.optimize(workers.fleet_objective, n_trials=len(waiting))
    _claims.recover_claims(
        study._storage, _claims.claims_study_id(study._storage, study._study_id)
    )
    study.killed = killed  # type: ignore[attr-defined]
    return study


def _check_fleet(study: optuna.Study, artifacts: Path, seed: int) -> dict[str, int]:
    trials = study.trials
    states = collections.Counter(t.state for t in trials)
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL}, states
    assert states[TrialState.COMPLETE] + states[TrialState.PRUNED] >= _TARGET
    killed = [n for k in study.killed for n in k["trials"]]  # type: ignore[attr-defined]
    assert killed, "the kills hit no trial"
    assert all(trials[n].state == TrialState.FAIL for n in killed)
    # Failed: the killed workers' trials, and any they held before the objective named them.
    unnamed = [t for t in trials if t.state == TrialState.FAIL and t.number not in killed]
    assert all("worker" not in t.user_attrs for t in unnamed) and len(unnamed) <= 2

    # One continuation per pause: each claim has one holder, each pause one finished child.
    links = [(t, _attrs.read_continuation(t.user_attrs)) for t in trials]
    links = [(t, link) for t, link in links if link is not None]
    assert links, "no paused trial was continued"
    claims = [link.claim for _, link in links]
    assert len(claims) == len(set(claims))
    finished = [link.trial_id for t, link in links if t.state != TrialState.FAIL]
    assert len(finished) == len(set(finished))
    storage = study._storage
    claims_id = _claims.claims_study_id(storage, study._study_id)
    assert not storage.get_all_trials(claims_id, states=(TrialState.RUNNING,))

    # Each continuation restored its parent's weights at the pause, bit for bit (a sample).
    by_id = {t._trial_id: t for t in trials}
    resumed = [(t, link) for t, link in links if t.user_attrs.get("resumed_digest")]
    finished_resumed = [t for t, _ in links if t.state != TrialState.FAIL]
    assert len(resumed) >= sum(1 for t in finished_resumed if t.user_attrs.get(_attrs.RESUMED))
    store = optuna.artifacts.FileSystemArtifactStore(str(artifacts))
    for t, link in random.Random(seed).sample(resumed, min(12, len(resumed))):
        parent = optuna_fms.load_checkpoint(by_id[link.trial_id], link.step, artifact_store=store)
        assert t.user_attrs["resumed_digest"] == workers.state_digest(parent), t.number

    # Every recorded checkpoint id has its file.
    recorded = [a for t in trials for a in _attrs.read_checkpoints(t.user_attrs).values()]
    missing = [a for a in recorded if not (artifacts / a).is_file()]
    assert not missing
    return {
        "trials": len(trials),
        "continued": len(links),
        "killed": len(killed),
        "killed continuations": sum(
            1 for n in killed if _attrs.read_continuation(trials[n].user_attrs)
        ),
        "retries": sum(1 for t in trials if "failed_trial" in t.system_attrs),
    }


def test_eight_workers_on_postgresql_two_killed(tmp_path: Path) -> None:
    url = workers.postgres_url(required=True)
    assert url is not None
    study = _run_fleet(url, tmp_path, n_workers=8, seed=1)
    print(_check_fleet(study, tmp_path / "artifacts", seed=1))


def test_four_workers_on_a_journal_file_two_killed(tmp_path: Path) -> None:
    study = _run_fleet(f"journal:{tmp_path / 'fleet.log'}", tmp_path, n_workers=4, seed=2)
    print(_check_fleet(study, tmp_path / "artifacts", seed=2))
