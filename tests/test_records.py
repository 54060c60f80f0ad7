"""training.records.RunRecords: resumable (variant, seed) benchmark records."""

import json

from infinite_former.training.records import RunRecords, settings_hash


def test_run_missing_skips_done_records_and_ignores_other_settings(tmp_path):
    calls = []

    def run_one(variant, seed):
        calls.append((variant, seed))
        return {"score": 10 * seed + len(variant)}

    key = settings_hash({"steps": 10})
    assert key == settings_hash({"steps": 10}) != settings_hash({"steps": 11}) and len(key) == 12
    records = RunRecords(tmp_path, key)
    records.run_missing([0], ["a", "bb"], run_one)
    assert calls == [("a", 0), ("bb", 0)]
    # a record of other settings is redone; finished ones are skipped; seed-major order
    stale = records.path("a", 1)
    stale.write_text(json.dumps({"variant": "a", "seed": 1, "settings_key": "other", "score": -1}))
    records.run_missing([0, 1], ["a", "bb"], run_one)
    assert calls[2:] == [("a", 1), ("bb", 1)]
    loaded = records.load(["a", "bb"])
    assert loaded["a"][1]["score"] == 11 and loaded["bb"][0] == {
        "variant": "bb", "seed": 0, "settings_key": key, "score": 2
    }  # fmt: skip
    # another key sees none of them
    assert RunRecords(tmp_path, settings_hash({"steps": 11})).load(["a", "bb"]) == {"a": {}, "bb": {}}
