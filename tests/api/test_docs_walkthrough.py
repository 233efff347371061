"""docs/API.md's walk-through, run as written: its curl commands against a live server.

A merchant developer copies these commands one by one; if the API drifts from the page (a
renamed field, another status, a new required header), this test fails. Each `sh` block of
the walk-through runs in bash with curl, as the page says; the example ids the page exports
(`export PROGRAM=...`) and the voucher code it redeems are swapped for the real ones from the
answer before. Each answer must carry every field the page shows for it, and the fields that
do not depend on ids or the clock must have the page's values.
"""

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from django.core.management import call_command

DOC = Path(__file__).resolve().parents[2] / "docs" / "API.md"
SECTION = "## From zero to a redeemed voucher"

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed"),
]


def walkthrough_blocks() -> list[tuple[str, str]]:
    """The walk-through's fenced blocks, in order: (language, text)."""
    text = DOC.read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return re.findall(r"```(\w+)\n(.*?)```", text[start:end], flags=re.S)


def shown_fields(block: str) -> dict[str, str | None]:
    """The `"field": value` pairs a JSON example shows (the page elides with `...`, so it is
    not JSON): the value as written when it is a string, a number, true, false or null."""
    pairs = re.findall(r'"(\w+)":\s*("(?:[^"\\]|\\.)*"|-?[\d.]+|true|false|null|[\[{])', block)
    return {field: None if value in "[{" else value for field, value in pairs}


def fields_of(answer) -> dict[str, list]:
    """Every field name anywhere in the answer, with the JSON texts of its values."""
    found: dict[str, list] = {}

    def walk(node):
        if isinstance(node, dict):
            for key, value in node.items():
                found.setdefault(key, []).append(json.dumps(value))
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(answer)
    return found


# Values that differ on every run: ids, codes, times.
VARYING = {
    "id", "program_id", "transaction_id", "code", "instance", "created_at", "expires_at",
    "redeemed_at", "last_activity_at", "finished_at",
}  # fmt: skip


def run(command: str, env: dict) -> dict:
    bash = shutil.which("bash")
    # The page's own commands, run as a reader runs them.
    done = subprocess.run(  # noqa: S603
        [bash, "-euo", "pipefail", "-c", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return json.loads(done.stdout)


def test_the_walkthrough_runs_as_written_from_zero_to_a_redeemed_voucher(live_server, capsys):
    blocks = walkthrough_blocks()
    languages = [language for language, _ in blocks]
    assert languages.count("sh") >= 7, languages
    assert languages.count("json") >= 7, languages

    env = {"PATH": "/usr/bin:/bin", "BASE": f"{live_server.url}/api/v1"}
    answers = []  # (command, answer) of each curl block
    replace: dict[str, str] = {}
    checked = 0  # answers whose example the page has shown
    for language, text in blocks:
        if language == "sh":
            if "make run" in text:
                continue  # the live server stands in for it
            if "apikey_create" in text:
                # The page's command, in this process: its database is the test's.
                arguments = re.findall(r"--(merchant|name|permission) ([\w:-]+)", text)
                options = [f"--{name}={value}" for name, value in arguments]
                call_command("apikey_create", *options)
                env["KEY"] = capsys.readouterr().out.strip()
                assert env["KEY"]
                continue
            for example, real in replace.items():
                text = text.replace(example, real)
            exported = re.findall(r"^export (\w+)=(\S+)$", text, flags=re.M)
            for name, example in exported:
                env[name] = real_id(name, answers)
                replace[example] = env[name]
            if "curl" not in text:
                continue
            command = text[text.index("curl ") :]
            answers.append((command, run(command, env)))
        elif language == "json" and answers:
            command, answer = answers[-1]
            if checked == len(answers) and "results" not in text:
                # A second answer to the last command: the page sends it again, with another
                # Idempotency-Key ("A second redemption (another key) is refused").
                command = re.sub(r"Idempotency-Key: [^\"]+", "Idempotency-Key: again", command)
                answer = run(command, env)
                answers.append((command, answer))
            checked = len(answers)
            check_shown(text, answer, command, replace)

    # The redemption path ended where the page says: a second redemption was refused.
    assert answers[-1][1]["code"] == "voucher_not_redeemable"
    final = [a for c, a in answers if "/redeem" in c]
    assert final
    assert final[0]["status"] == "redeemed"


def real_id(name: str, answers: list) -> str:
    """The value an `export NAME=...` line stands for, from the answer before it."""
    assert answers, f"export {name} comes before any answer"
    return answers[-1][1]["id"]


def check_shown(example: str, answer: dict, command: str, replace: dict) -> None:
    shown = shown_fields(example)
    if "voucher" in answer and isinstance(answer["voucher"], dict):
        # The page redeems the voucher its capture issued, by its example code.
        example_code = shown_fields(example).get("code", "").strip('"')
        if example_code:
            replace[example_code] = answer["voucher"]["code"]
    if "results" in shown:  # the batch example: not sent by the walk-through's commands
        return
    got = fields_of(answer)
    for field, value in shown.items():
        assert field in got, f"{command[:60]!r}: the page shows {field!r}, the API does not"
        if value is None or field in VARYING:
            continue
        assert value in got[field], (
            f"{command[:60]!r}: the page shows {field}: {value}, the API gives {got[field]}"
        )
