"""The contracts CI gate and AsyncAPI: `buslib contracts snapshot|check|asyncapi|ls`, run as a learner runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jsonschema
import pytest

from buslib.contracts import contracts
from buslib.contracts.asyncapi import asyncapi_document
from buslib.contracts.snapshot import check_snapshot, load_snapshot
from buslib.errors import ContractError

REPO = Path(__file__).resolve().parents[1]
ASYNCAPI_SCHEMA = Path(__file__).parent / "data" / "asyncapi-3.0.0.schema.json"

V1 = """
from buslib import Event

class OrderPlaced(Event, type="cli.orders.placed", version=1):
    order_id: str
    amount: float
"""


def write_module(folder: Path, body: str, name: str = "shop_contracts") -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))


def run(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """Run `python -m buslib contracts ...` in ``folder`` (its modules importable), like CI does."""
    env = {**os.environ, "PYTHONPATH": str(folder), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "buslib", "contracts", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A project folder with one contract module, snapshotted into contracts/."""
    write_module(tmp_path, V1)
    done = run(tmp_path, "snapshot", "--module", "shop_contracts")
    assert done.returncode == 0, done.stderr
    return tmp_path


def test_snapshot_writes_one_stable_file_per_contract_and_a_config(shop):
    folder = shop / "contracts"
    assert sorted(p.name for p in folder.iterdir()) == ["cli.orders.placed.v1.json", "compatibility.json"]
    assert json.loads((folder / "compatibility.json").read_text())["compatibility"] == "BACKWARD"
    text = (folder / "cli.orders.placed.v1.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"  # stable formatting
    assert json.loads(text)["$id"] == "urn:buslib:schema:cli.orders.placed:1"
    again = run(shop, "snapshot", "--module", "shop_contracts")
    assert again.returncode == 0 and "1 unchanged" in again.stdout
    assert (folder / "cli.orders.placed.v1.json").read_text() == text


def test_check_passes_when_nothing_changed(shop):
    done = run(shop, "check", "--module", "shop_contracts")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK: 1 unchanged" in done.stdout


def test_check_fails_on_a_required_field_then_passes_after_the_fix(shop):
    write_module(shop, V1 + "    currency: str\n")
    broken = run(shop, "check", "--module", "shop_contracts")
    assert broken.returncode == 1
    assert "INCOMPATIBLE cli.orders.placed.v1 under BACKWARD" in broken.stdout
    assert "currency: required-field-added" in broken.stdout  # field path + rule
    write_module(shop, V1 + '    currency: str = "EUR"\n')
    fixed = run(shop, "check", "--module", "shop_contracts")
    assert fixed.returncode == 0, fixed.stdout
    assert "changed compatibly (BACKWARD): cli.orders.placed.v1" in fixed.stdout


def test_check_catches_a_rename_of_a_required_field(shop):
    write_module(shop, V1.replace("amount: float", "total: float"))
    done = run(shop, "check", "--module", "shop_contracts")
    assert done.returncode == 1
    assert "total: required-field-added" in done.stdout


def test_snapshot_refuses_an_incompatible_change_unless_forced(shop):
    write_module(shop, V1.replace("amount: float", "amount: str"))
    refused = run(shop, "snapshot", "--module", "shop_contracts")
    assert refused.returncode == 1 and "amount: type-changed" in refused.stderr and "--force" in refused.stderr
    assert '"number"' in (shop / "contracts" / "cli.orders.placed.v1.json").read_text()  # nothing written
    forced = run(shop, "snapshot", "--module", "shop_contracts", "--force")
    assert forced.returncode == 0 and "wrote cli.orders.placed.v1" in forced.stdout
    assert (shop / "contracts" / "history" / "cli.orders.placed.v1.1.json").is_file()  # old revision kept
    assert run(shop, "check", "--module", "shop_contracts").returncode == 0


def test_transitive_mode_checks_against_every_recorded_revision(shop):
    # revision 2 drops `amount` (fine under BACKWARD); revision 3 brings it back as a string
    write_module(shop, V1.replace("    amount: float\n", ""))
    assert run(shop, "snapshot", "--module", "shop_contracts", "--mode", "BACKWARD_TRANSITIVE").returncode == 0
    write_module(shop, V1.replace("amount: float", "amount: str | None = None"))
    done = run(shop, "check", "--module", "shop_contracts")
    assert done.returncode == 1, done.stdout
    assert "under BACKWARD_TRANSITIVE" in done.stdout and "amount: type-changed" in done.stdout


def test_a_new_major_version_is_new_and_retiring_the_old_one_is_fine(shop):
    v2 = V1 + '\nclass OrderPlacedV2(Event, type="cli.orders.placed", version=2):\n    order_id: str\n    cents: int\n'
    write_module(shop, v2)
    done = run(shop, "check", "--module", "shop_contracts")
    assert done.returncode == 0 and "new contract: cli.orders.placed.v2" in done.stdout
    assert run(shop, "snapshot", "--module", "shop_contracts").returncode == 0
    write_module(
        shop,
        'from buslib import Event\nclass OrderPlacedV2(Event, type="cli.orders.placed", version=2):\n    order_id: str\n    cents: int\n',
    )
    retired = run(shop, "check", "--module", "shop_contracts")
    assert (
        retired.returncode == 0
        and "retired (older major version left the code): cli.orders.placed.v1" in retired.stdout
    )


def test_a_version_going_backwards_fails(shop):
    v2 = V1 + '\nclass OrderPlacedV2(Event, type="cli.orders.placed", version=2):\n    order_id: str\n'
    write_module(shop, v2)
    assert run(shop, "snapshot", "--module", "shop_contracts").returncode == 0
    write_module(shop, V1)  # v2 vanished, v1 is the newest again
    done = run(shop, "check", "--module", "shop_contracts")
    assert done.returncode == 1 and "VERSION WENT BACKWARDS cli.orders.placed.v2" in done.stdout


def test_removing_a_whole_contract_fails(shop):
    write_module(shop, 'from buslib import Event\nclass Other(Event, type="cli.other.thing", version=1):\n    x: int\n')
    done = run(shop, "check", "--module", "shop_contracts")
    assert done.returncode == 1 and "REMOVED cli.orders.placed.v1" in done.stdout


def test_missing_snapshot_folder_is_a_clear_error(tmp_path):
    write_module(tmp_path, V1)
    done = run(tmp_path, "check", "--module", "shop_contracts", "--dir", "nowhere")
    assert done.returncode == 2
    assert (
        "nowhere/ does not exist" in done.stderr
        and "buslib contracts snapshot" in done.stderr
        and "--dir" in done.stderr
    )


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (lambda d: (d / "cli.orders.placed.v1.json").write_text('{"properties": '), "is corrupted"),
        (lambda d: (d / "compatibility.json").unlink(), "has no compatibility.json"),
        (
            lambda d: (d / "compatibility.json").write_text('{"compatibility": "SIDEWAYS"}'),
            "unknown compatibility mode 'SIDEWAYS'",
        ),
        (lambda d: (d / "notes.json").write_text("{}"), "does not belong in a contract snapshot"),
        (
            lambda d: (d / "cli.orders.placed.v1.json").write_text('{"x-event-type": "a.b", "x-event-version": 1}'),
            "its name says",
        ),
    ],
)
def test_corrupted_snapshot_is_a_clear_error(shop, damage, says):
    damage(shop / "contracts")
    done = run(shop, "check", "--module", "shop_contracts")
    assert done.returncode == 2, done.stdout
    assert says in done.stderr and "Traceback" not in done.stderr


def test_snapshot_refuses_to_write_into_a_folder_that_is_not_a_snapshot(tmp_path):
    write_module(tmp_path, V1)
    (tmp_path / "contracts").mkdir()
    (tmp_path / "contracts" / "important.txt").write_text("keep me")
    done = run(tmp_path, "snapshot", "--module", "shop_contracts")
    assert done.returncode == 2 and "is not a contract snapshot" in done.stderr
    assert (tmp_path / "contracts" / "important.txt").read_text() == "keep me"


def test_modules_come_from_pyproject(tmp_path):
    write_module(tmp_path, V1)
    no_config = run(tmp_path, "snapshot")
    assert no_config.returncode == 2 and "--module" in no_config.stderr
    (tmp_path / "pyproject.toml").write_text('[tool.buslib]\ncontracts = ["shop_contracts"]\n')
    assert run(tmp_path, "snapshot").returncode == 0
    assert (tmp_path / "contracts" / "cli.orders.placed.v1.json").is_file()


def test_check_from_a_subfolder_uses_the_contracts_folder_next_to_pyproject(tmp_path):
    """A learner in notebooks/ or docs/ runs `buslib contracts check`: the project's snapshot is found."""
    write_module(tmp_path, V1)
    (tmp_path / "pyproject.toml").write_text('[tool.buslib]\ncontracts = ["shop_contracts"]\n')
    assert run(tmp_path, "snapshot").returncode == 0
    sub = tmp_path / "notebooks" / "deeper"
    sub.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # only what the command finds itself
    done = subprocess.run(
        [sys.executable, "-m", "buslib", "contracts", "check"], cwd=sub, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "OK: 1 unchanged" in done.stdout
    assert not (sub / "contracts").exists()  # nothing looked for (or written) in the subfolder


def test_a_module_that_does_not_import_is_a_clear_error(tmp_path):
    done = run(tmp_path, "check", "--module", "no_such_module_here")
    assert done.returncode == 2 and "Cannot import contract module 'no_such_module_here'" in done.stderr


def test_ls_lists_subjects_and_converters():
    done = run(REPO, "ls", "--module", "buslib.contracts.examples")
    assert done.returncode == 0
    assert "orders.created.v2" in done.stdout and "dual-publishes orders.created.v1" in done.stdout


def test_the_kits_own_contracts_match_the_committed_snapshot():
    """The CI gate on the repository itself (pyproject.toml names buslib.contracts.examples)."""
    done = run(REPO, "check")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Checked 2 contract(s)" in done.stdout and "OK: 2 unchanged" in done.stdout


def test_check_snapshot_api_reports_each_contract():
    import buslib.contracts.examples  # noqa: F401  (registers the kit's contracts)

    result = check_snapshot(REPO / "contracts", modules=["buslib.contracts.examples"])
    assert result.ok and [c.subject for c in result.changes] == ["orders.created.v1", "orders.created.v2"]
    assert load_snapshot(REPO / "contracts").mode.value == "BACKWARD"
    with pytest.raises(ContractError, match="does not exist"):
        load_snapshot(REPO / "no-such-folder")


# --- AsyncAPI ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def asyncapi_validator() -> jsonschema.Draft7Validator:
    """The official AsyncAPI 3.0.0 JSON Schema (from the @asyncapi/specs package, Apache-2.0)."""
    return jsonschema.Draft7Validator(json.loads(ASYNCAPI_SCHEMA.read_text()))


def test_asyncapi_document_validates_against_the_official_schema(asyncapi_validator):
    import buslib.contracts.examples  # noqa: F401

    document = asyncapi_document(contracts(["buslib.contracts.examples"]))
    errors = [f"{list(e.path)}: {e.message[:200]}" for e in asyncapi_validator.iter_errors(document)]
    assert errors == []
    assert set(document["channels"]) == {"orders.created.v1", "orders.created.v2"}
    assert {op["action"] for op in document["operations"].values()} == {"send", "receive"}
    payload = document["components"]["messages"]["orders_created_v2"]["payload"]
    assert payload == {"$ref": "#/components/schemas/OrderCreatedV2"}
    assert "amount_cents" in document["components"]["schemas"]["OrderCreatedV2"]["properties"]


def test_the_asyncapi_validator_rejects_a_broken_document(asyncapi_validator):
    """The validation above can fail: a v2-style action and a channel without messages map are caught."""
    import buslib.contracts.examples  # noqa: F401

    document = asyncapi_document(contracts(["buslib.contracts.examples"]))
    document["operations"]["send_orders_created_v1"]["action"] = "publish"
    assert list(asyncapi_validator.iter_errors(document))


def test_asyncapi_cli_writes_a_file(tmp_path, asyncapi_validator):
    out = tmp_path / "asyncapi.json"
    done = run(REPO, "asyncapi", "--out", str(out))
    assert done.returncode == 0 and "2 channels" in done.stdout
    assert not list(asyncapi_validator.iter_errors(json.loads(out.read_text())))


def test_asyncapi_headers_are_the_headers_the_codec_sends():
    """The documented headers match the wire: no header left out, none listed that is never sent."""
    from buslib import tracing
    from buslib.contracts.codec import encode
    from buslib.contracts.examples import OrderCreatedV2

    sent = encode(OrderCreatedV2(order_id="A-1", user_id=7, amount_cents=1250), source="shop")
    assert len(sent) == 2  # the v2 event and its dual-published v1 copy
    headers = asyncapi_document(contracts(["buslib.contracts.examples"]))["components"]["schemas"]["CloudEventHeaders"]
    on_the_wire = {name for out in sent for name in out.headers} | {tracing.HEADER}  # the bus adds traceparent
    assert set(headers["properties"]) == on_the_wire
    assert all(set(headers["required"]) <= set(out.headers) for out in sent)
