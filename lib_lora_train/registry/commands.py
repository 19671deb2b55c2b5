"""The ``registry`` and ``audit`` commands: argument parsers and what each one prints.

Wired into ``lib_lora_train/cli.py`` with ``add_parsers(commands)`` and, for
``args.command in ("registry", "audit")``, ``run(args, home)``. Every action is recorded with
the actor ``cli:<OS user>``. Human output is aligned tables; ``--json`` prints the full result.
Exit status: 0 done, 1 problems found (``registry verify``, ``audit verify``); errors are
``LoraTrainError`` and left to ``cli.main`` (exit status 2).
"""

import getpass
import json
import sys

from .errors import RegistryError

STATUS_CHOICES = ("active", "deleting", "deleted", "expired", "all")


def add_parsers(subparsers):
    """Add ``registry`` (list, show, delete, forget-patient, expire, verify) and ``audit`` (verify)."""
    registry = subparsers.add_parser("registry", help="list, show, delete, expire and verify registered adapters")
    actions = registry.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    listing = _action(actions, "list", "list adapters as a table")
    listing.add_argument("--status", choices=STATUS_CHOICES, default="active", help="which adapters (default: active)")
    show = _action(actions, "show", "show one adapter's record (GDPR Art. 30 facts)")
    show.add_argument("adapter", metavar="NAME_OR_ID", help="adapter name (<lora:NAME>) or registry id")
    show.add_argument("--lineage", action="store_true", help="also list the pseudonymous patient and study ids")
    delete = _action(actions, "delete", "erase an adapter, its sidecars, copies and training data")
    delete.add_argument("adapter", metavar="NAME_OR_ID", help="adapter name (<lora:NAME>) or registry id")
    delete.add_argument("--reason", required=True, help="why (one line, no personal data); kept in the registry")
    delete.add_argument("--keep-training-data", action="store_true",
                        help="keep the prepared dataset the adapter was trained on")
    forget = _action(actions, "forget-patient",
                     "erase every adapter and dataset made from one patient's data (GDPR Art. 17)")
    forget.add_argument("--patient-id", required=True, metavar="ID",
                        help="the patient's PatientID as in the original DICOM files; '-' reads it from standard "
                             "input (keeps it out of the shell history). Only its keyed pseudonym is kept")
    forget.add_argument("--reason", required=True, help="why (one line, no personal data), e.g. 'Art. 17 request'")
    expire = _action(actions, "expire",
                     "erase adapters past their expiry date or unused for too long (GDPR Art. 5(1)(e))")
    expire.add_argument("--as-of", metavar="YYYY-MM-DD", help="the date to judge by (default: today, UTC)")
    expire.add_argument("--unused-days", type=int, default=365, help="erase adapters unused this long (default 365)")
    expire.add_argument("--dry-run", action="store_true", help="only list what would be erased")
    verify = _action(actions, "verify", "check that the registry and the files on disk agree")
    verify.add_argument("--repair", action="store_true",
                        help="mark rows whose file is gone as deleted and finish interrupted erasures; "
                             "orphan files are listed, never deleted")
    audit = subparsers.add_parser("audit", help="check the hash-chained audit log")
    audit_actions = audit.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    _action(audit_actions, "verify", "check every line's hash chain and the head file (audit.head); exit status 1 "
                                     "and the first line that was edited, removed, moved or added when not intact")


def run(args, home):
    """Run a parsed ``registry`` or ``audit`` command in ``home``; returns the exit status."""
    if args.command == "audit":
        return _audit_verify(args, home)
    from .adapters import Registry

    with Registry(home) as registry:
        handler = {"list": _list, "show": _show, "delete": _delete, "forget-patient": _forget, "expire": _expire,
                   "verify": _verify}[args.registry_command]
        return handler(args, registry, home)


def cli_actor():
    """The actor of command-line actions: ``cli:<OS user name>``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def format_table(headers, rows):
    """Rows of text as columns aligned under ``headers``."""
    rows = [[_cell(value) for value in row] for row in rows]
    widths = [max(len(str(h)), *(len(r[i]) for r in rows)) if rows else len(str(h)) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).upper().ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(value.ljust(w) for value, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _list(args, registry, home):
    records = registry.list(None if args.status == "all" else args.status)
    if args.json:
        return _print_json([r.to_dict() for r in records])
    rows = [(r.id, r.name, r.status, r.num_images, len(r.patients), r.created_at[:10], r.expires_at,
             (r.last_used_at or "")[:10], r.owner) for r in records]
    if not rows:
        print("no adapters" if args.status == "all" else f"no {args.status} adapters")
        return 0
    headers = ("id", "name", "status", "images", "patients", "created", "expires", "last used", "owner")
    print(format_table(headers, rows))
    return 0


def _show(args, registry, home):
    record = registry.get(args.adapter)
    data = record.to_dict(lineage=args.lineage)
    receipt = registry.stored_receipt(record.id)
    if args.json:
        return _print_json(dict(data, receipt=receipt) if receipt else data)
    data["config"] = json.dumps(data["config"], sort_keys=True)
    data["copies"] = ", ".join(data["copies"]) or "-"
    width = max(len(key) for key in data)
    print("\n".join(f"{key.ljust(width)}  {_cell(value)}" for key, value in data.items()))
    if receipt:
        print(f"{'erasure'.ljust(width)}  {receipt['counts']['files_removed']} file(s) removed at "
              f"{receipt['completed_at']}; audit entry {receipt.get('audit_hash', '-')}")
    return 0


def _delete(args, registry, home):
    receipt = registry.delete(args.adapter, actor=cli_actor(), reason=args.reason,
                              delete_training_data=not args.keep_training_data)
    if args.json:
        return _print_json(receipt)
    print(_adapter_receipt_text(receipt))
    return 0


def _forget(args, registry, home):
    from .lifecycle import site_pseudonymizer

    patient_id = sys.stdin.readline().strip() if args.patient_id == "-" else args.patient_id
    if not patient_id:
        raise RegistryError("--patient-id is empty; give the PatientID, or '-' and the id on standard input")
    receipt = registry.forget_patient(patient_id, site_pseudonymizer(home), actor=cli_actor(), reason=args.reason)
    if args.json:
        return _print_json(receipt)
    counts = receipt["counts"]
    print(f"patient erasure {receipt['erasure_id']} for pseudonym {receipt['patient']}: "
          f"{counts['adapters']} adapter(s), {counts['datasets']} dataset(s), {counts['files_removed']} file(s), "
          f"{counts['bytes_removed']} bytes removed")
    if receipt["adapters"]:
        print(format_table(("adapter", "name", "files", "bytes"), [
            (r["adapter_id"], r["name"], r["counts"]["files_removed"], r["counts"]["bytes_removed"])
            for r in receipt["adapters"]]))
    if receipt["datasets"]:
        print(format_table(("dataset", "files", "bytes", "removed with"), [
            (d["dataset_id"], d["file_count"], d["bytes"], d["removed_by"] or "-") for d in receipt["datasets"]]))
    for folder in receipt["unchecked_manifests"]:
        print(f"warning: unreadable manifest in {folder}; check that dataset by hand")
    print(f"audit entry {receipt['audit_hash']}")
    return 0


def _expire(args, registry, home):
    report = registry.expire(as_of=args.as_of, unused_days=args.unused_days, dry_run=args.dry_run,
                             actor=cli_actor())
    if args.json:
        return _print_json(report)
    verb = "would erase" if args.dry_run else "erased"
    print(f"as of {report['as_of']} (unused for more than {report['unused_days']} days): "
          f"{verb} {len(report['adapters'])} adapter(s)")
    if report["adapters"]:
        print(format_table(("id", "name", "reason", "expires", "last used"), [
            (a["adapter_id"], a["name"], a["reason_code"], a["expires_at"], (a["last_used_at"] or "")[:10])
            for a in report["adapters"]]))
    return 0


def _verify(args, registry, home):
    problems = registry.verify(repair=args.repair, actor=cli_actor())
    open_problems = [p for p in problems if not p.repaired]
    if args.json:
        _print_json([p.to_dict() for p in problems])
        return 1 if open_problems else 0
    if not problems:
        print("registry and disk agree: no problems")
        return 0
    print(format_table(("kind", "target", "repaired", "detail"),
                       [(p.kind, p.target, "yes" if p.repaired else "no", p.detail) for p in problems]))
    if any(p.kind == "orphan_file" for p in problems):
        print("orphan files are never deleted automatically")
    return 1 if open_problems else 0


def _audit_verify(args, home):
    from .audit import AuditLog

    report = AuditLog(home.audit_log_path).check_chain()
    if args.json:
        _print_json(report.to_dict())
    elif report.ok:
        print(f"audit log intact: {report.lines} line(s)" + (f" ({report.reason})" if report.reason else ""))
    else:
        print(f"audit log NOT intact: line {report.first_bad_line} of {report.lines}: {report.reason}")
    return 0 if report.ok else 1


def _adapter_receipt_text(receipt):
    counts, dataset = receipt["counts"], receipt["dataset"]
    if dataset["removed"]:
        data_line = (f"training data {dataset['dataset_id']}: removed ({dataset['file_count']} files, "
                     f"{dataset['bytes']} bytes)")
    else:
        data_line = f"training data {dataset.get('dataset_id') or '-'}: not removed ({dataset.get('note', '')})"
    lines = [f"adapter {receipt['name']} ({receipt['adapter_id']}) {receipt['status']}: "
             f"{counts['files_removed']} file(s), {counts['bytes_removed']} bytes removed", data_line]
    lines.append(format_table(("role", "bytes", "sha256", "file"), [
        (f["role"], f["size_bytes"], (f["sha256"] or "-")[:16], f["path"]) for f in receipt["files"]]))
    lines += [f"kept {k['role']} {k['path']}: {k['note']}" for k in receipt["kept"]]
    lines.append(f"audit entry {receipt.get('audit_hash', '-')}")
    return "\n".join(lines)


def _action(actions, name, text):
    parser = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def _cell(value):
    return "-" if value is None or value == "" else str(value)


def _print_json(payload):
    print(json.dumps(payload, indent=2, sort_keys=True))
    return 0

