"""Checkpoints and freeze-thaw on ``Boto3ArtifactStore`` against an S3-speaking server.

The test starts moto's standalone server (``moto.server.ThreadedMotoServer``, a real HTTP
endpoint speaking the S3 protocol) on a free local port and talks to it with a real boto3
client, so every checkpoint goes through ``put_object``/``get_object``/``delete_object`` over
HTTP. moto and boto3 come with the ``dev`` extra: without them these tests fail in CI
(``CI`` set) and are skipped elsewhere, saying what to install.
"""

from __future__ import annotations

from collections.abc import Iterator
import os
from typing import Any
import uuid

import optuna
from optuna.trial import TrialState
import pytest
import test_freeze_thaw
import workers

import optuna_fms
from optuna_fms import _attrs


_PAUSE_STEP = 1


def _require_moto() -> None:
    try:
        import boto3  # noqa: F401
        import moto.server  # noqa: F401
    except ImportError as exc:
        reason = f"moto[server] and boto3 are needed (pip install -e '.[dev]'): {exc}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must provide them: {reason}")
        pytest.skip(reason)


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, str]]:
    """A boto3 S3 client of a fresh moto server holding an empty bucket, and the bucket.

    moto keeps its state per process, not per server, so each test gets a bucket of its own.
    """
    _require_moto()
    import boto3
    from moto.server import ThreadedMotoServer

    # A proxy from the environment must not see a local endpoint.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        client = boto3.client(
            "s3",
            endpoint_url=f"http://{host}:{port}",
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )
        bucket = f"fms-{uuid.uuid4().hex}"
        client.create_bucket(Bucket=bucket)
        yield client, bucket
    finally:
        server.stop()


def _bucket_keys(client: Any, bucket: str) -> set[str]:
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(obj["Key"] for obj in page.get("Contents", []))
    return keys


def _recorded_ids(study: optuna.Study) -> set[str]:
    return {
        artifact_id
        for trial in study.trials
        for artifact_id in _attrs.read_checkpoints(trial.user_attrs).values()
    }


class _PauseTrialZero(optuna_fms.FMSPruner):
    """Pauses trial 0 at :data:`_PAUSE_STEP` through the real pause path, and nothing else."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if trial.number == 0 and trial.last_step == _PAUSE_STEP:
            self._pause(study, trial)
            return True
        return False


def test_freeze_thaw_on_boto3_artifact_store(s3: tuple[Any, str], tmp_path: Any) -> None:
    """Pause, claim and continue with every checkpoint in S3; the weights resume bit for bit."""
    client, bucket = s3
    store = optuna.artifacts.Boto3ArtifactStore(bucket, client=client)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'fms.db'}",
        sampler=test_freeze_thaw._ContinueWhenPossible(
            seed=0, artifact_store=store, n_startup_trials=0
        ),
        pruner=_PauseTrialZero(max_steps=workers.FLEET_STEPS),
    )
    study.optimize(workers.fleet_objective, n_trials=3)

    parent, child, fresh = study.trials
    assert parent.state == TrialState.PRUNED
    assert child.state == fresh.state == TrialState.COMPLETE
    assert parent.user_attrs[_attrs.PAUSED]["step"] == _PAUSE_STEP
    assert child.user_attrs[_attrs.CONTINUES]["trial"] == 0
    assert child.user_attrs[_attrs.CONTINUES]["step"] == _PAUSE_STEP
    assert child.params == parent.params
    assert _attrs.CONTINUES not in fresh.user_attrs  # the claim was taken once

    # The checkpoint read back from S3 is the paused state, and resume restored exactly it.
    ckpt = optuna_fms.read_checkpoint(parent, _PAUSE_STEP, artifact_store=store)
    assert ckpt.step == _PAUSE_STEP
    assert ckpt.metadata["trial_number"] == 0
    assert ckpt.optimizer_state is not None and ckpt.optimizer_state["state"]
    assert child.user_attrs["resumed_digest"] == workers.state_digest(ckpt.tensors)
    # The continuation saved only its new epochs.
    child_steps = sorted(_attrs.read_checkpoints(child.user_attrs))
    assert child_steps and min(child_steps) > _PAUSE_STEP

    # Every recorded checkpoint is an object in the bucket, and retention deleted the rest.
    assert _bucket_keys(client, bucket) == _recorded_ids(study)


def test_surrogate_study_on_boto3_artifact_store(s3: tuple[Any, str], tmp_path: Any) -> None:
    """A short study with the real FMS sampler and pruner keeps its checkpoints in S3."""
    client, bucket = s3
    store = optuna.artifacts.Boto3ArtifactStore(bucket, client=client)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 'fms.db'}",
        sampler=optuna_fms.FMSSampler(
            seed=0,
            n_startup_trials=4,
            artifact_store=store,
            n_candidates=16,
            max_train_rows=64,
            n_scratch_epochs=20,
            n_warm_epochs=5,
        ),
        pruner=optuna_fms.FMSPruner(max_steps=workers.FLEET_STEPS, n_startup_trials=4),
    )
    study.optimize(workers.fleet_objective, n_trials=12)

    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    recorded = _recorded_ids(study)
    assert recorded and _bucket_keys(client, bucket) == recorded
    for child in study.trials:
        continues = child.user_attrs.get(_attrs.CONTINUES)
        if continues is None:
            continue
        parent = study.trials[continues["trial"]]
        ckpt = optuna_fms.read_checkpoint(parent, continues["step"], artifact_store=store)
        assert child.user_attrs["resumed_digest"] == workers.state_digest(ckpt.tensors)
