"""The contracts CI gate: a committed snapshot of JSON Schemas, and a check against it.

>>> from buslib.contracts.snapshot import write_snapshot, check_snapshot
>>> write_snapshot("contracts", modules=["buslib.contracts.examples"])        # doctest: +SKIP
>>> result = check_snapshot("contracts", modules=["buslib.contracts.examples"])  # doctest: +SKIP
>>> result.ok                                                              # doctest: +SKIP
True

The folder holds one JSON Schema per contract (``orders.created.v1.json``: type and major
version), formatted stably (sorted keys, two-space indent) so a change shows as a small
diff in review; ``compatibility.json`` holds the mode (default BACKWARD, overridable per
subject); ``history/`` keeps earlier revisions of a changed schema for the ``*_TRANSITIVE``
modes. ``buslib contracts snapshot`` writes it, ``buslib contracts check`` compares the code
with it: exit 0 when every change is compatible, 1 with a report (field path + rule) when
not, 2 when the folder is missing or corrupted.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from buslib.contracts.compat import Compatibility, CompatibilityReport, check, parse_mode
from buslib.contracts.schema import canonical_json, json_schema
from buslib.contracts.versions import contracts
from buslib.errors import ContractError, IncompatibleContractError
from buslib.events import Event

__all__ = [
    "CONFIG_FILE",
    "CheckResult",
    "ContractChange",
    "Snapshot",
    "check_snapshot",
    "ProjectSettings",
    "project_settings",
    "load_snapshot",
    "write_snapshot",
]

CONFIG_FILE = "compatibility.json"
_SCHEMA_FILE = re.compile(r"^(?P<type>[a-z0-9_-]+(?:\.[a-z0-9_-]+)*)\.v(?P<version>[1-9][0-9]*)\.json$")
_HISTORY_FILE = re.compile(r"^(?P<subject>.+)\.(?P<n>[0-9]+)\.json$")
_RESTORE = (
    "Restore the folder from version control (git checkout -- {dir}) or write it again (buslib contracts snapshot)."
)


@dataclass
class Snapshot:
    """A snapshot folder, loaded: the mode, per-subject overrides, schemas and their history."""

    directory: Path
    mode: Compatibility = Compatibility.BACKWARD
    overrides: dict[str, Compatibility] = field(default_factory=dict)
    schemas: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: dict[str, list[dict[str, Any]]] = field(default_factory=dict)

    def mode_for(self, subject: str) -> Compatibility:
        """The compatibility mode of one subject (its override, else the folder's)."""
        return self.overrides.get(subject, self.mode)

    def versions(self) -> dict[str, set[int]]:
        """Type name -> major versions present in the snapshot."""
        found: dict[str, set[int]] = {}
        for subject in self.schemas:
            name, _, version = subject.rpartition(".v")
            found.setdefault(name, set()).add(int(version))
        return found


@dataclass
class ContractChange:
    """How one contract differs from the snapshot.

    ``status`` is one of ``unchanged``, ``compatible`` (changed, still compatible), ``new``,
    ``retired`` (an older major version left the code while a newer one stays),
    ``incompatible``, ``removed`` (the whole type left the code) or ``version-went-backwards``.
    """

    subject: str
    status: str
    mode: Compatibility
    report: CompatibilityReport | None = None

    @property
    def ok(self) -> bool:
        """True unless the change breaks consumers."""
        return self.status in {"unchanged", "compatible", "new", "retired"}


@dataclass
class CheckResult:
    """The outcome of :func:`check_snapshot`; ``str()`` is the report the CLI prints."""

    directory: Path
    changes: list[ContractChange]

    @property
    def ok(self) -> bool:
        """True when every contract is unchanged or changed compatibly."""
        return all(change.ok for change in self.changes)

    def of(self, status: str) -> list[ContractChange]:
        """The changes with one status."""
        return [change for change in self.changes if change.status == status]

    def __str__(self) -> str:
        lines = [f"Checked {len(self.changes)} contract(s) against {self.directory}/."]
        bad = [c for c in self.changes if not c.ok]
        for change in bad:
            if change.report is not None:
                lines.append(f"INCOMPATIBLE {change.subject} under {change.mode.value}:")
                lines += [f"  - {problem}" for problem in change.report.problems]
            elif change.status == "removed":
                lines.append(
                    f"REMOVED {change.subject}: no class declares it any more, so its consumers lose their producer. "
                    "Restore it, or record the removal deliberately (a snapshot written with force=True)."
                )
            else:
                lines.append(
                    f"VERSION WENT BACKWARDS {change.subject}: the snapshot has this version but the code's newest "
                    "version of the type is older. Restore the class (versions only go up)."
                )
        for change in self.of("compatible"):
            lines.append(f"changed compatibly ({change.mode.value}): {change.subject}")
            lines += [f"  warning: {w}" for w in change.report.warnings] if change.report else []
        lines += [f"new contract: {c.subject}" for c in self.of("new")]
        lines += [f"retired (older major version left the code): {c.subject}" for c in self.of("retired")]
        if self.ok:
            unchanged = len(self.of("unchanged"))
            pending = len(self.changes) - unchanged
            lines.append(f"OK: {unchanged} unchanged, {pending} changed compatibly/new/retired.")
            if pending:
                lines.append("Record the changes with `buslib contracts snapshot` and commit the folder.")
        else:
            lines.append(
                f"FAILED: {len(bad)} contract(s) break consumers. Make the change compatible (e.g. give a new field a "
                "default, keep the old field), or publish a new major version on its own subject."
            )
        return "\n".join(lines)


@dataclass
class SnapshotResult:
    """What :func:`write_snapshot` wrote."""

    directory: Path
    mode: Compatibility
    written: list[str]
    unchanged: list[str]
    deleted: list[str]

    def __str__(self) -> str:
        parts = [f"Snapshot in {self.directory}/ (mode {self.mode.value}):"]
        parts += [f"  wrote {subject}" for subject in self.written]
        parts += [f"  deleted {subject}" for subject in self.deleted]
        parts.append(f"  {len(self.unchanged)} unchanged.")
        return "\n".join(parts)


@dataclass(frozen=True)
class ProjectSettings:
    """Where the project is (the folder of its pyproject.toml) and its ``[tool.buslib]`` settings.

    Attributes:
        root: the folder holding pyproject.toml.
        modules: the modules that define contracts (``contracts = [...]``).
    """

    root: Path
    modules: list[str]

    @property
    def snapshot_dir(self) -> Path:
        """The committed snapshot: ``contracts/`` next to pyproject.toml, wherever the command runs."""
        return self.root / "contracts"


def project_settings(start: Path | None = None) -> ProjectSettings:
    """Read ``[tool.buslib] contracts = [...]`` from the nearest pyproject.toml.

    Looks in ``start`` (default: the current directory) and its parents.

    Raises:
        ContractError: no pyproject.toml, or it has no such list.
    """
    folder = (start or Path.cwd()).resolve()
    for candidate in [folder, *folder.parents]:
        path = candidate / "pyproject.toml"
        if path.is_file():
            break
    else:
        raise ContractError(
            f"No pyproject.toml in {folder} or above, so it is not known which modules hold contracts. "
            "Run from inside the project, or name the modules explicitly."
        )
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            raise ContractError(
                "Reading pyproject.toml on Python 3.10 needs `pip install tomli`, or name the modules explicitly."
            ) from None
    try:
        config = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ContractError(f"{path} is not valid TOML: {err}") from None
    modules = config.get("tool", {}).get("buslib", {}).get("contracts")
    if not modules or not isinstance(modules, list) or not all(isinstance(m, str) for m in modules):
        raise ContractError(
            f'{path} has no [tool.buslib] contracts = ["package.module", ...] list. Add one, or name the modules '
            "explicitly."
        )
    return ProjectSettings(candidate, modules)


def _read_json(path: Path, directory: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise ContractError(f"{path} is corrupted: {err}. {_RESTORE.format(dir=directory)}") from None


def load_snapshot(directory: str | Path) -> Snapshot:
    """Read a snapshot folder.

    Raises:
        ContractError: the folder or its config file is missing, or a file is corrupted.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not directory.is_dir() or not config_path.is_file():
        what = "does not exist" if not directory.is_dir() else f"has no {CONFIG_FILE}"
        raise ContractError(
            f"The contract snapshot folder {directory}/ {what}, so there is nothing to check against. "
            "Write one (buslib contracts snapshot) and commit it."
        )
    config = _read_json(config_path, directory)
    if not isinstance(config, dict):
        raise ContractError(f"{config_path} is corrupted: expected a JSON object. {_RESTORE.format(dir=directory)}")
    snapshot = Snapshot(directory, mode=parse_mode(config.get("compatibility", "BACKWARD"), str(config_path)))
    for subject, mode in (config.get("subjects") or {}).items():
        snapshot.overrides[subject] = parse_mode(mode, f"{config_path} subjects.{subject}")
    for path in sorted(directory.glob("*.json")):
        if path.name == CONFIG_FILE:
            continue
        match = _SCHEMA_FILE.match(path.name)
        schema = _read_json(path, directory)
        if match is None or not isinstance(schema, dict):
            raise ContractError(
                f"{path} does not belong in a contract snapshot: files are named <type>.v<N>.json and hold a JSON "
                f"Schema object. {_RESTORE.format(dir=directory)}"
            )
        said = (schema.get("x-event-type"), schema.get("x-event-version"))
        if said != (match["type"], int(match["version"])):
            raise ContractError(
                f"{path} is corrupted: its name says {match['type']} v{match['version']} but its content says "
                f"{said[0]} v{said[1]}. {_RESTORE.format(dir=directory)}"
            )
        snapshot.schemas[path.name.removesuffix(".json")] = schema
    history_files = sorted(
        (
            (m["subject"], int(m["n"]), p)
            for p in (directory / "history").glob("*.json")
            if (m := _HISTORY_FILE.match(p.name))
        ),
    )
    for subject, _, path in history_files:
        snapshot.history.setdefault(subject, []).append(_read_json(path, directory))
    return snapshot


def _compare(snapshot: Snapshot, code: list[type[Event]]) -> list[ContractChange]:
    changes: list[ContractChange] = []
    in_code = {cls.subject(): cls for cls in code}
    for subject, cls in in_code.items():
        mode = snapshot.mode_for(subject)
        old = snapshot.schemas.get(subject)
        new = json_schema(cls)
        if old is None:
            changes.append(ContractChange(subject, "new", mode))
        elif canonical_json(old) == canonical_json(new):
            changes.append(ContractChange(subject, "unchanged", mode))
        else:
            history = snapshot.history.get(subject, [])
            report = check(new, [*history, old] if history else old, mode)  # a lone old one reads "the old schema"
            changes.append(ContractChange(subject, "compatible" if report.compatible else "incompatible", mode, report))
    newest_in_code: dict[str, int] = {}
    for cls in code:
        newest_in_code[cls.event_type] = max(newest_in_code.get(cls.event_type, 0), cls.event_version)
    for name, versions in snapshot.versions().items():
        for version in sorted(versions):
            subject = f"{name}.v{version}"
            if subject in in_code:
                continue
            if name not in newest_in_code:
                status = "removed"
            elif version > newest_in_code[name]:
                status = "version-went-backwards"
            else:
                status = "retired"
            changes.append(ContractChange(subject, status, snapshot.mode_for(subject)))
    return sorted(changes, key=lambda change: change.subject)


def _code_contracts(modules: list[str] | None) -> list[type[Event]]:
    found = contracts(modules)
    if not found:
        where = ", ".join(modules) if modules else "this process"
        raise ContractError(f"No contracts found in {where}. Name the modules that define the Event classes.")
    return found


def check_snapshot(directory: str | Path, *, modules: list[str] | None = None) -> CheckResult:
    """Compare the code's contracts with a snapshot folder.

    Args:
        directory: the snapshot folder (e.g. ``contracts``).
        modules: check only contracts defined in these (already imported) modules.

    Returns:
        A :class:`CheckResult`; ``.ok`` is False when a change breaks the mode.

    Raises:
        ContractError: the folder is missing or corrupted, or no contracts were found.
    """
    snapshot = load_snapshot(directory)
    return CheckResult(Path(directory), _compare(snapshot, _code_contracts(modules)))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)  # a crash never leaves half a file


def write_snapshot(
    directory: str | Path,
    *,
    modules: list[str] | None = None,
    mode: str | Compatibility | None = None,
    force: bool = False,
) -> SnapshotResult:
    """Write the code's contracts into a snapshot folder (create it, or update it).

    An incompatible change is refused unless ``force``: the point of the snapshot is that
    breaking changes become new major versions instead.

    Args:
        directory: the snapshot folder.
        modules: snapshot only contracts defined in these (already imported) modules.
        mode: the compatibility mode to record (default: the folder's, else BACKWARD).
        force: record incompatible changes, removed types and versions going backwards too.

    Returns:
        A :class:`SnapshotResult` listing the files written.

    Raises:
        IncompatibleContractError: a change breaks the mode (and ``force`` is False).
        ContractError: the folder holds something that is not a snapshot, or is corrupted.
    """
    directory = Path(directory)
    if (directory / CONFIG_FILE).is_file():
        snapshot = load_snapshot(directory)
    elif directory.exists() and any(directory.iterdir()):
        raise ContractError(
            f"{directory}/ exists and is not a contract snapshot (no {CONFIG_FILE}); refusing to write into it. "
            "Pick an empty or new folder."
        )
    else:
        snapshot = Snapshot(directory)
    if mode is not None:
        snapshot.mode = parse_mode(mode, "mode")
    code = _code_contracts(modules)
    changes = _compare(snapshot, code)
    bad = [change for change in changes if not change.ok]
    if bad and not force:
        result = CheckResult(directory, changes)
        raise IncompatibleContractError(
            f"Not recorded: the snapshot refuses incompatible changes.\n{result}\n"
            "If breaking consumers is really intended, write the snapshot with force=True.",
            {change.subject: change.report for change in bad},
        )
    (directory / "history").mkdir(parents=True, exist_ok=True)
    config = {
        "compatibility": snapshot.mode.value,
        "subjects": {s: m.value for s, m in sorted(snapshot.overrides.items())},
    }
    _write(directory / CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")
    written, unchanged, deleted = [], [], []
    by_subject = {cls.subject(): cls for cls in code}
    for change in changes:
        path = directory / f"{change.subject}.json"
        if change.status == "unchanged":
            unchanged.append(change.subject)
        elif change.subject in by_subject:
            if change.subject in snapshot.schemas:  # keep the old revision for *_TRANSITIVE checks
                n = len(snapshot.history.get(change.subject, [])) + 1
                _write(
                    directory / "history" / f"{change.subject}.{n}.json",
                    canonical_json(snapshot.schemas[change.subject]),
                )
            _write(path, canonical_json(json_schema(by_subject[change.subject])))
            written.append(change.subject)
        else:
            path.unlink()
            for old in (directory / "history").glob(f"{change.subject}.*.json"):
                if _HISTORY_FILE.match(old.name) and old.name.rsplit(".", 2)[0] == change.subject:
                    old.unlink()
            deleted.append(change.subject)
    if not any((directory / "history").iterdir()):
        (directory / "history").rmdir()
    return SnapshotResult(directory, snapshot.mode, written, unchanged, deleted)
