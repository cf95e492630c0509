"""tests/mutation.py, the mutation campaign's driver (`make mutate`; cosmic-ray is in the `dev` extra:
skipped without it)."""

from __future__ import annotations

import sys

import pytest

from tests.mutation import CONFIG, MODULES, ROOT, cosmic_ray, mutant_key, sample


def kept_mutants(folder, seed: int) -> set:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome

    module, tests = MODULES["filters"]
    config, db = folder / "filters.toml", folder / "filters.sqlite"
    config.write_text(CONFIG.format(module=module, tests=tests, root=ROOT, python=sys.executable, timeout=60))
    db.unlink(missing_ok=True)
    cosmic_ray("init", str(config), str(db))
    sample(db, 5, seed)
    with use_db(str(db), WorkDB.Mode.open) as work_db:
        skipped = {item.job_id for item, result in work_db.completed_work_items
                   if result.worker_outcome == WorkerOutcome.SKIPPED}
        return {mutant_key(item) for item in work_db.work_items if item.job_id not in skipped}


def test_the_same_seed_draws_the_same_mutants(tmp_path):
    """cosmic-ray gives every mutant a random job ID at each init: a seeded sample must not
    depend on them, so that a campaign can be repeated."""
    pytest.importorskip("cosmic_ray")
    first = kept_mutants(tmp_path, seed=23)
    assert len(first) == 5
    assert kept_mutants(tmp_path, seed=23) == first
    assert kept_mutants(tmp_path, seed=24) != first
