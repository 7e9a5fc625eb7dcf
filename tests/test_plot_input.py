"""`rynn-edge plot` against damaged episode logs and bad output paths: every case ends in exit 0 or 2 with
no traceback; a damaged record is refused naming its line and field; nothing is written half-way.

The damage is generated: every field the metrics and the plot read, in every record kind, replaced by
values of the wrong type, shape or range, or removed; then seeded random edits of whole lines."""

from __future__ import annotations

import copy
import json
import random

import pytest
from test_episode_metrics import plain_log, records

from rynn_edge.runtime.cli import main

INT, BOOL, NUMBER, TEXT = "int", "bool", "number", "text"
# What each read field must be (per joint: one per motor), written here independently of the checker.
FIELDS = {
    "config": {"loop_rate_hz": "rate", "rate_hz": "rate", "motors": "names"},
    "step": {
        "deadline_ns": INT,
        "period_error_ns": INT,
        "held": BOOL,
        "chunk_id": INT,
        "valid": [BOOL],
        "servo_error": ["byte"],
        "goal": [NUMBER],
        "state": [NUMBER],
        "goal_raw": [INT],
    },
    "query": {"chunk_id": INT, "t_ns": INT},
    "chunk": {"chunk_id": INT, "t_ns": INT, "latency_s": NUMBER},
    "bus": {"t_ns": INT, "timeouts": INT, "checksum_errors": INT},
    "end": {"exit_reason": TEXT},
}
MISSING = object()
BAD = {
    INT: [MISSING, None, "12", 1.5, True, 2**70, [1]],
    BOOL: [MISSING, None, 1, "true"],
    NUMBER: [MISSING, None, "0.1", True, float("nan"), float("inf"), {}],
    TEXT: [MISSING, None, 3, ["completed"]],
    "rate": [MISSING, None, "100", 0, -5, float("inf"), True],
    "names": [MISSING, None, "shoulder_pan", [], [1, 2]],
    "byte": [256, -1, "0", None],
}


def damaged_logs():
    """(description, records, line number, field) for every single-field damage of the first record of
    each kind."""
    base = records()
    first = {}
    for index, (kind, _) in enumerate(base):
        first.setdefault(kind, index)
    first["config"] = first["start"]
    for kind, fields in FIELDS.items():
        index = first[kind]
        for name, want in fields.items():
            joints = len(base[0][1]["config"]["motors"])
            if isinstance(want, list):
                good = [0] * joints
                values = [good[:-1], good + [0], "0,0", None, MISSING] + [
                    [bad] + good[1:] for bad in BAD.get(want[0], []) if bad is not MISSING
                ]
            else:
                values = BAD[want]
            for value in values:
                recs = copy.deepcopy(base)
                target = recs[index][1]["config"] if kind == "config" else recs[index][1]
                if value is MISSING:
                    del target[name]
                else:
                    target[name] = value
                yield f"{kind}.{name}={value!r}", recs, index + 1, name


CASES = list(damaged_logs())


def test_the_generator_covers_every_field_read():
    assert len(CASES) > 150
    assert {name for *_, name in CASES} == {name for fields in FIELDS.values() for name in fields}


@pytest.mark.parametrize(("what", "recs", "line", "field"), CASES, ids=[c[0] for c in CASES])
def test_a_damaged_record_is_refused_naming_its_line_and_field(tmp_path, capsys, what, recs, line, field):
    path = tmp_path / "damaged.jsonl"
    plain_log(path, recs)
    assert main(["plot", str(path), "-o", str(tmp_path / "fig.png")]) == 2, what
    err = capsys.readouterr().err
    assert f"{path}: line {line}: " in err and f"'{field}'" in err and "Traceback" not in err, err
    assert not (tmp_path / "fig.png").exists()


def test_a_config_that_is_not_an_object_or_a_second_start_is_refused(tmp_path, capsys):
    recs = records()
    recs[0][1]["config"] = ["loop_rate_hz", 100]
    plain_log(tmp_path / "a.jsonl", recs)
    assert main(["plot", str(tmp_path / "a.jsonl"), "--summary"]) == 2
    assert "line 1: 'start' record: 'config' is [" in capsys.readouterr().err
    recs = records()
    plain_log(tmp_path / "b.jsonl", recs[:10] + recs)
    assert main(["plot", str(tmp_path / "b.jsonl"), "--summary"]) == 2
    assert "line 11: a second 'start' record" in capsys.readouterr().err


@pytest.mark.parametrize("seed", range(40))
def test_random_line_damage_never_ends_in_a_traceback(tmp_path, capfd, seed):
    """Property: whatever happens to the lines, plot exits 0 (a readable log) or 2 naming a line."""
    rng = random.Random(seed)
    lines = plain_log(tmp_path / "x.jsonl", records()).split(b"\n")[:-1]
    for _ in range(rng.randrange(1, 4)):
        k = rng.randrange(len(lines))
        record = json.loads(lines[k])
        edit = rng.choice(("drop_key", "retype", "swap", "cut", "garbage", "duplicate"))
        if edit == "drop_key" and len(record) > 1:
            record.pop(rng.choice([key for key in record if key != "kind"] or ["kind"]))
        elif edit == "retype":
            key = rng.choice(list(record))
            record[key] = rng.choice([None, "x", -1, 1e308, [], {}, [None] * 6, True])
        elif edit == "swap":
            j = rng.randrange(len(lines))
            lines[k], lines[j] = lines[j], lines[k]
            continue
        elif edit == "cut":
            lines[k] = lines[k][: rng.randrange(len(lines[k]))]
            continue
        elif edit == "garbage":
            lines[k] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
            continue
        else:
            lines.insert(k, lines[k])
            continue
        lines[k] = json.dumps(record).encode()
    path = tmp_path / "x.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    code = main(["plot", str(path), "--summary"])
    err = capfd.readouterr().err
    assert code in (0, 2) and "Traceback" not in err, err
    if code == 2:
        assert str(path) in err


def test_output_paths_are_checked_before_anything_is_read(tmp_path, capsys):
    log = tmp_path / "run.jsonl"
    plain_log(log, records())
    folder = tmp_path / "figs"
    folder.mkdir()
    assert main(["plot", str(log), "-o", str(folder)]) == 2
    assert f"{folder} is a folder; expected a file name" in capsys.readouterr().err
    assert main(["plot", str(log), "-o", str(tmp_path / "run.plot")]) == 2
    assert "the figure is a PNG; give a file name ending in .png" in capsys.readouterr().err
    same = tmp_path / "run.png"
    same.write_bytes(log.read_bytes())  # a log named like a figure, drawn onto itself
    assert main(["plot", str(same)]) == 2 and main(["plot", str(same), "-o", str(same)]) == 2
    assert "is the episode log itself" in capsys.readouterr().err
    assert same.read_bytes() == log.read_bytes() and list(folder.iterdir()) == []
    assert not (tmp_path / "run.plot").exists() and not (tmp_path / "figs.png").exists()
    assert main(["plot", str(log), "--from", "nan"]) == 2
    assert "must be a finite number" in capsys.readouterr().err
    assert main(["plot", str(log), "-o", str(tmp_path / "new" / "fig.png")]) == 0
    assert (tmp_path / "new" / "fig.png").read_bytes()[:4] == b"\x89PNG"
