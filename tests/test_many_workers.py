"""Freeze-thaw with many worker processes, as users run them, some of them killed mid-run.

PostgreSQL (8 workers) with Optuna's heartbeat and retry callback: two workers SIGKILLed at
random moments while they run a trial, and a third that SIGKILLs itself inside ``study.ask``
(in the sampler's ``before_trial``, right after it took a claim, before the objective starts).
A journal file (4 workers, no heartbeat): the two kills during trials. Checks afterwards: every
trial finished (none RUNNING without a live worker), no claim left RUNNING, the claim of the
trial killed inside ask released and its pause open again, no paused trial continued twice,
each continuation restored its parent's weights bit for bit, every recorded checkpoint has its
file.
"""

from __future__ import annotations

import collections
import json
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
from optuna_fms._freeze_thaw import _claims


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


def _run_fleet(
    spec: str, tmp_path: Path, n_workers: int, seed: int, die_in_ask: bool
) -> optuna.Study:
    """Run ``n_workers`` processes to :data:`_TARGET` trials; kill two at random moments (while
    they run a trial, a continuation when one is running) and start replacements. With
    ``die_in_ask`` one more worker SIGKILLs itself inside ``study.ask``, right after the
    sampler took its k-th claim (k from 1 to 3, at random), and is replaced too."""
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

    def start(worker_seed: int, die_at_take: int = 0) -> multiprocessing.process.BaseProcess:
        args = (spec, name, str(artifacts), worker_seed, _TARGET, die_at_take)
        p = ctx.Process(target=workers.fleet_worker, args=args, daemon=True)
        p.start()
        return p

    rng = random.Random(seed)
    # Random moments, counted in finished trials (so they fall mid-run on any machine).
    kills = sorted(rng.sample(range(_TARGET // 8, _TARGET * 3 // 4), 2))
    takes = rng.randint(1, 3) if die_in_ask else 0
    procs = [start(seed * 100 + i, takes if i == 0 else 0) for i in range(n_workers)]
    # The worker that is to die inside ask (None once it did), kept out of the other kills.
    dier: multiprocessing.process.BaseProcess | None = procs[0] if takes else None
    killed: list[dict] = []

    def errors() -> list[str]:
        return [f.read_text() for f in sorted(tmp_path.glob("worker-*.err"))]

    def reap_dier() -> None:
        """Replace the worker that killed itself inside ask, and record the trial it held."""
        nonlocal dier
        if dier is None or dier.is_alive():
            return
        dier.join()
        if dier.exitcode != -signal.SIGKILL:
            raise AssertionError(
                f"the worker to die at its claim {takes} exited {dier.exitcode}: {errors()}"
            )
        held = json.loads((tmp_path / f"died-in-ask-{dier.pid}.json").read_text())
        trial = study._storage.get_trial(held["trial_id"])
        # Killed before the objective ran: no "worker" attribute, RUNNING until the heartbeat
        # fails it, and its claim held by it.
        assert trial.state in (TrialState.RUNNING, TrialState.FAIL), trial.state
        assert "worker" not in trial.user_attrs
        claim = study._storage.get_trial(held["claim"])
        assert claim.user_attrs.get("continued_by_id") == held["trial_id"], claim.user_attrs
        killed.append({"pid": dier.pid, "trials": [held["trial"]], "in_ask": held})
        if not heartbeat:
            _fail_as_the_heartbeat_would(study, [trial])
        procs[procs.index(dier)] = start(seed * 100 + n_workers + 2)
        dier = None

    for k, at in enumerate(kills):
        while _n_finished(study) < at:
            reap_dier()
            if not all(p.is_alive() for p in procs if p is not dier):
                raise AssertionError(f"a worker exited early: {errors()}")
            time.sleep(0.1)
        # A worker in the middle of a trial; one running a continuation if any is.
        deadline = time.monotonic() + 10
        victim = None
        while victim is None and time.monotonic() < deadline:
            reap_dier()
            running = _running_by_worker(study._storage, study._study_id)
            alive = {p.pid: p for p in procs if p.is_alive() and p is not dier}
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
    deadline = time.monotonic() + 300
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        reap_dier()
        time.sleep(0.1)
    reap_dier()
    for p in procs:
        p.join(timeout=1)
        assert p.exitcode == 0, (p.exitcode, errors())
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
    storage = study._storage
    claims_id = _claims.claims_study_id(storage, study._study_id)

    # The trial of the worker killed inside ask: failed (by the heartbeat), its claim released
    # and, unless that was the pause's last attempt, the pause open again.
    for kill in study.killed:  # type: ignore[attr-defined]
        if "in_ask" not in kill:
            continue
        trial = trials[kill["in_ask"]["trial"]]
        assert "worker" not in trial.user_attrs and not trial.params, trial
        claim = storage.get_trial(kill["in_ask"]["claim"])
        assert claim.state == TrialState.FAIL, claim.state
        assert claim.user_attrs["continued_by_id"] == trial._trial_id
        if claim.user_attrs.get("failed_continuations", 0) + 1 < _claims.MAX_ATTEMPTS:
            pause = _claims.pause_claim(claim)
            again = [
                c
                for c in storage.get_all_trials(claims_id)
                if c._trial_id > claim._trial_id and _claims.pause_claim(c) == pause
            ]
            assert again, "the pause was not opened again"

    # One continuation per pause: each claim has one holder, each pause one finished child.
    links = [(t, _attrs.read_continuation(t.user_attrs)) for t in trials]
    links = [(t, link) for t, link in links if link is not None]
    assert links, "no paused trial was continued"
    claims = [link.claim for _, link in links]
    assert len(claims) == len(set(claims))
    finished = [link.trial_id for t, link in links if t.state != TrialState.FAIL]
    assert len(finished) == len(set(finished))
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
        "killed in ask": sum(1 for k in study.killed if "in_ask" in k),  # type: ignore[attr-defined]
    }


def test_eight_workers_on_postgresql_three_killed(tmp_path: Path) -> None:
    url = workers.postgres_url(required=True)
    assert url is not None
    study = _run_fleet(url, tmp_path, n_workers=8, seed=1, die_in_ask=True)
    print(_check_fleet(study, tmp_path / "artifacts", seed=1))


def test_four_workers_on_a_journal_file_two_killed(tmp_path: Path) -> None:
    study = _run_fleet(
        f"journal:{tmp_path / 'fleet.log'}", tmp_path, n_workers=4, seed=2, die_in_ask=False
    )
    print(_check_fleet(study, tmp_path / "artifacts", seed=2))
