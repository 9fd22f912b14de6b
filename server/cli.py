"""
The ``cavra`` command line.

Every command opens the store given by ``--database`` (or
``CAVRA_DATABASE_URL``, default ``sqlite:///.cavra/cavra.db``) with the
connectors of ``--connectors`` (or ``CAVRA_CONNECTORS``). Commands print
readable tables, or the API's JSON documents with ``--json``. Errors are
printed as messages naming what to fix, with exit status 2; a store that
cannot be opened (not a database, no permission) is one such line too.

``cavra api``, ``cavra migrate`` and the other commands make a new SQLite
store (and its folder) when the file does not exist yet. ``cavra tokens``
does not: a mistyped path would put the tokens into a store that no server
reads, so ``tokens create`` makes a new store only with ``--create``.
"""

from __future__ import annotations

import argparse
import getpass
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import peewee

from cavra_core import (
    CavraError,
    ConnectorConfigError,
    Engine,
    __version__,
    evidence,
    identity,
    validation,
)
from cavra_core.engine import MAX_SERVICE_DELIVERIES
from cavra_core.executions import WORKER_ID, Leases, default_worker_id
from cavra_core.plugins import PluginSetupError
from cavra_core.store import (
    StoreError,
    database_url,
    describe_url,
    migrate,
    open_database,
    sqlite_path,
)
from cavra_core.store_child import StoreProcessFailed
from cavra_server.logs import LOG_FORMATS, configure_logging
from cavra_server.runner import UnprotectedBind, refuse_unprotected_bind
from cavra_server.worker_service import (
    Schedule,
    ScheduleError,
    WorkerService,
    cron,
    every,
)

# Under ``python -m cavra_server.cli`` the module is ``__main__``; its log
# lines keep the module's own name.
log = logging.getLogger(__spec__.name if __spec__ else __name__)

#: The largest request body the API accepts (413 beyond).
MAX_BODY_BYTES = 1_048_576


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    configure_logging(arguments.log_level, arguments.log_format)
    try:
        return arguments.handler(arguments)
    except CavraError as error:
        _print_problem(error, arguments)
        return 2
    except (
        ConnectorConfigError,
        PluginSetupError,
        StoreError,
        UnprotectedBind,
        ScheduleError,
    ) as error:
        _print_error(str(error), arguments)
        return 2
    except peewee.IntegrityError:
        raise  # a bug in cavra, not a store that cannot be used
    except (peewee.DatabaseError, peewee.InterfaceError) as error:
        # Not a database, no permission, no server: one line, no traceback.
        _print_error(
            f"cannot use the database {describe_url(_database_url(arguments))}: "
            f"{_first_line(error)}; check --database (or CAVRA_DATABASE_URL)",
            arguments,
        )
        return 2
    except OSError as error:
        text = str(error.strerror or error)
        if error.filename:
            text = f"{text}: {error.filename}"
        if _is_store_path(error.filename, arguments):
            text = (
                f"cannot use the database {_database_url(arguments)}: {text}; "
                "check --database (or CAVRA_DATABASE_URL)"
            )
        _print_error(text, arguments)
        return 2
    except KeyboardInterrupt:
        return 130


def _is_store_path(filename: Any, arguments: argparse.Namespace) -> bool:
    """Whether ``filename`` is the SQLite store's file or one of its folders."""
    path = sqlite_path(_database_url(arguments))
    if path is None or not isinstance(filename, str | os.PathLike):
        return False
    failed = os.path.abspath(filename)
    return failed == path or Path(path).is_relative_to(failed)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _print_error(
    message: str, arguments: argparse.Namespace, level: int = logging.ERROR
) -> None:
    """A message for the person at the terminal, or a log line in JSON mode."""
    if arguments.log_format == "json":
        log.log(level, "%s", message)
        return
    kind = "warning: " if level == logging.WARNING else ""
    print(f"cavra: {kind}{message}", file=sys.stderr)


def _common_options(log_level: str = "warning") -> argparse.ArgumentParser:
    """The options every store command takes; a new parser per command, so a
    command's default log level cannot leak into another's."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database",
        default=None,
        help="database URL (default: $CAVRA_DATABASE_URL or sqlite:///.cavra/cavra.db)",
    )
    common.add_argument(
        "--connectors",
        default=None,
        help="connectors TOML file (default: $CAVRA_CONNECTORS, none if unset)",
    )
    common.add_argument(
        "--log-level",
        default=os.environ.get("CAVRA_LOG_LEVEL", log_level),
        choices=["debug", "info", "warning", "error"],
    )
    return common


def _add_log_format(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-format",
        default=os.environ.get("CAVRA_LOG_FORMAT", "text"),
        choices=LOG_FORMATS,
        help="text lines (default, or $CAVRA_LOG_FORMAT) or one JSON object a line",
    )


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(
            "must be between 0 and 65535 (0: any free port)"
        )
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cavra",
        description="Recover failed audit-evidence deliveries under governance.",
    )
    parser.add_argument("--version", action="version", version=f"cavra {__version__}")
    parser.set_defaults(
        log_level="warning", log_format="text", handler=lambda _: _usage(parser)
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    api = commands.add_parser(
        "api", parents=[_common_options("info")], help="serve the HTTP API"
    )
    api.add_argument("--host", default="127.0.0.1", help="address to bind")
    api.add_argument("--port", type=_port, default=8000, help="port (0: any free one)")
    api.add_argument("--threads", type=_positive, default=8, help="worker threads")
    _add_log_format(api)
    api.set_defaults(handler=command_api)

    migrate_command = commands.add_parser(
        "migrate", parents=[_common_options()], help="apply pending database migrations"
    )
    migrate_command.set_defaults(handler=command_migrate)

    plan = commands.add_parser(
        "plan",
        parents=[_common_options()],
        help="make a retry plan for every failed delivery",
    )
    _add_actor(plan)
    _add_policy(plan)
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(handler=command_plan)

    worker = commands.add_parser("worker", help="the retry worker")
    worker.set_defaults(handler=lambda _: _usage(worker))
    worker_commands = worker.add_subparsers(title="worker commands", metavar="COMMAND")

    run = worker_commands.add_parser(
        "run",
        parents=[_common_options()],
        help="run the worker once (a dry run by default)",
    )
    _add_actor(run)
    _add_policy(run)
    mode = run.add_mutually_exclusive_group()
    mode.add_argument(
        "--execute", action="store_true", help="live run: re-deliver approved retries"
    )
    mode.add_argument(
        "--dry-run", action="store_true", help="record what would be sent (default)"
    )
    run.add_argument(
        "--max",
        type=int,
        default=5,
        dest="max_retry_deliveries",
        help="most retries to select (1-100, default 5)",
    )
    run.add_argument(
        "--interval",
        type=int,
        default=60,
        dest="interval_minutes",
        help="schedule window in minutes (default 60)",
    )
    run.add_argument("--json", action="store_true", help="print the run as JSON")
    run.set_defaults(handler=command_worker_run)

    serve = worker_commands.add_parser(
        "serve",
        parents=[_common_options("info")],
        help="run the worker on a schedule until stopped (dry runs by default)",
        description="Run the worker at the start of every schedule window until "
        "SIGTERM or SIGINT. Across every service sharing the database, each "
        "window gets one scheduled run.",
    )
    _add_actor(serve)
    _add_policy(serve)
    serve_mode = serve.add_mutually_exclusive_group()
    serve_mode.add_argument(
        "--execute", action="store_true", help="live runs: re-deliver approved retries"
    )
    serve_mode.add_argument(
        "--dry-run", action="store_true", help="record what would be sent (default)"
    )
    when = serve.add_mutually_exclusive_group()
    when.add_argument(
        "--every",
        metavar="DURATION",
        default=None,
        help="window length: 30m, 1h, 2s, 1d (default 60m)",
    )
    when.add_argument(
        "--interval",
        type=_positive,
        default=None,
        dest="interval_minutes",
        help="window length in minutes, as for `cavra worker run`",
    )
    when.add_argument(
        "--cron",
        metavar="EXPR",
        default=None,
        help="windows between the fire times of a cron expression, in UTC",
    )
    serve.add_argument(
        "--max",
        type=int,
        default=5,
        dest="max_retry_deliveries",
        help="most retries each window's run selects (1-10000, default 5)",
    )
    serve.add_argument(
        "--lease",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="how long a claimed retry stays this worker's without a heartbeat; "
        "another worker rescues it after that (1-3600, default 30)",
    )
    serve.add_argument(
        "--batch",
        type=int,
        default=1000,
        help="the most retries claimed in one transaction; a worker claims about "
        "half a second of its recent sends at a time, up to this "
        "(1-1000, default 1000)",
    )
    serve.add_argument(
        "--worker-id",
        default=None,
        help="this worker's name in leases and executions (default host:pid)",
    )
    serve.add_argument(
        "--bookkeeping",
        choices=("process", "thread"),
        default="process",
        help="where live runs claim and record retries beside the sends: a "
        "process of the worker's own (default; faster on two cores or more) or "
        "a thread of the worker process (one process, less memory)",
    )
    serve.add_argument(
        "--catch-up",
        action="store_true",
        help="run once at start for the window in progress unless it has its run",
    )
    _add_log_format(serve)
    serve.set_defaults(handler=command_worker_serve)

    runs = worker_commands.add_parser(
        "runs", parents=[_common_options()], help="list worker runs, newest first"
    )
    which = runs.add_mutually_exclusive_group()
    which.add_argument("--dry-run", action="store_true", help="only dry runs")
    which.add_argument("--live", action="store_true", help="only live runs")
    runs.add_argument("--limit", type=int, default=20, help="how many (1-500)")
    runs.add_argument("--json", action="store_true", help="print the page as JSON")
    runs.set_defaults(handler=command_worker_runs)

    connectors = commands.add_parser("connectors", help="the configured connectors")
    connectors.set_defaults(handler=lambda _: _usage(connectors))
    connector_commands = connectors.add_subparsers(
        title="connector commands", metavar="COMMAND"
    )
    listing = connector_commands.add_parser(
        "list", parents=[_common_options()], help="list connectors with their health"
    )
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    listing.set_defaults(handler=command_connectors_list)
    check = connector_commands.add_parser(
        "check",
        parents=[_common_options()],
        help="check reachability and credentials without delivering evidence",
    )
    check.add_argument("connector_ids", nargs="*", help="connectors (default: all)")
    check.add_argument("--json", action="store_true", help="print results as JSON")
    check.set_defaults(handler=command_connectors_check)
    resume = connector_commands.add_parser(
        "resume",
        parents=[_common_options()],
        help="make a paused or disabled connector active again",
    )
    resume.add_argument("connector_id", help="the connector's table name")
    _add_actor(resume)
    resume.set_defaults(handler=command_connectors_resume)

    tokens = commands.add_parser("tokens", help="API tokens and their roles")
    tokens.set_defaults(handler=lambda _: _usage(tokens))
    token_commands = tokens.add_subparsers(title="token commands", metavar="COMMAND")
    create = token_commands.add_parser(
        "create",
        parents=[_common_options()],
        help="make a token; it is printed once and never shown again",
        epilog="roles: "
        + "; ".join(f"{role}: {what}" for role, what in identity.ROLES.items()),
    )
    create.add_argument("--role", required=True, choices=list(identity.ROLES))
    create.add_argument(
        "--name",
        required=True,
        help="who uses it; recorded as the actor of everything done with it",
    )
    create.add_argument(
        "--create",
        action="store_true",
        help="make a new store if the SQLite file does not exist yet "
        "(without it, a missing file is refused as a likely mistake)",
    )
    create.set_defaults(handler=command_tokens_create)
    token_list = token_commands.add_parser(
        "list", parents=[_common_options()], help="list tokens (never the tokens)"
    )
    token_list.add_argument("--json", action="store_true", help="print them as JSON")
    token_list.set_defaults(handler=command_tokens_list)
    revoke = token_commands.add_parser(
        "revoke", parents=[_common_options()], help="revoke a token at once"
    )
    revoke.add_argument("token", metavar="NAME", help="the token's name or tok_ id")
    revoke.set_defaults(handler=command_tokens_revoke)

    evidence_parser = commands.add_parser(
        "evidence", help="the evidence log: export it, verify it"
    )
    evidence_parser.set_defaults(handler=lambda _: _usage(evidence_parser))
    evidence_commands = evidence_parser.add_subparsers(
        title="evidence commands", metavar="COMMAND"
    )
    export = evidence_commands.add_parser(
        "export",
        parents=[_common_options()],
        help="write every entry, oldest first, one JSON object per line, "
        "then a closing line that counts them",
    )
    export.add_argument(
        "--output",
        metavar="FILE",
        default=None,
        help="the file to write, whole or not at all (default: standard output)",
    )
    export.set_defaults(handler=command_evidence_export)
    verify = evidence_commands.add_parser(
        "verify",
        parents=[_common_options()],
        help="check an export offline, or the store with --store (exit 1: broken)",
    )
    source = verify.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "file",
        nargs="?",
        metavar="FILE",
        help="a file written by `cavra evidence export`; no database is opened",
    )
    source.add_argument(
        "--store",
        action="store_true",
        help="check the database: the chain and every record it vouches for",
    )
    verify.add_argument(
        "--json", action="store_true", help="print the verification report as JSON"
    )
    verify.set_defaults(handler=command_evidence_verify)

    dashboard = commands.add_parser(
        "dashboard", parents=[_common_options()], help="show the worker dashboard"
    )
    dashboard.add_argument("--json", action="store_true", help="print it as JSON")
    dashboard.set_defaults(handler=command_dashboard)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _add_actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--generated-by",
        default=None,
        help="who asks (default: the login name)",
    )


def _add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="retry policy override, e.g. --policy max_retry_attempts=5 (repeatable)",
    )


def _actor(arguments: argparse.Namespace) -> str:
    if arguments.generated_by:
        return arguments.generated_by
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _policy(pairs: list[str]) -> dict[str, Any]:
    """Parse KEY=VALUE pairs; values are read as JSON (numbers, true/false)."""
    policy: dict[str, Any] = {}
    for pair in pairs:
        key, separator, value = pair.partition("=")
        if not separator or not key:
            raise CavraError(
                f"--policy {pair!r} must look like KEY=VALUE, e.g. max_retry_attempts=5"
            )
        try:
            policy[key.strip()] = json.loads(value)
        except json.JSONDecodeError as exc:
            raise CavraError(
                f"--policy {key}: the value must be a number, true or false"
            ) from exc
    return policy


def _engine(arguments: argparse.Namespace) -> Engine:
    engine = Engine(arguments.database, arguments.connectors)
    if not len(engine.connectors):
        _print_error(
            "no connectors configured (pass --connectors or set "
            "CAVRA_CONNECTORS); lineages of unknown connectors only wait",
            arguments,
            logging.WARNING,
        )
    return engine


def command_api(arguments: argparse.Namespace) -> int:
    from cavra_server import create_app, serve

    engine = _engine(arguments)
    try:
        with engine.database.connection_context():
            configured = identity.tokens_configured()
        refuse_unprotected_bind(arguments.host, configured)
    except UnprotectedBind:
        engine.close()
        raise
    log.info(
        "store open database=%s connectors=%d",
        describe_url(engine.database_url),
        len(engine.connectors),
    )
    serve(
        create_app(engine, max_body_bytes=MAX_BODY_BYTES),
        host=arguments.host,
        port=arguments.port,
        threads=arguments.threads,
        # Bodies a little over the limit get the app's problem+json 413;
        # waitress cuts off far larger ones itself instead of reading them.
        max_request_body_size=8 * MAX_BODY_BYTES,
    )
    engine.close()
    return 0


def command_migrate(arguments: argparse.Namespace) -> int:
    url = _database_url(arguments)
    database = open_database(url)
    applied = migrate(database)
    where = describe_url(url)
    if applied:
        print(f"applied {len(applied)} migration(s) to {where}: {', '.join(applied)}")
    else:
        print(f"{where} is up to date")
    return 0


def _database_url(arguments: argparse.Namespace) -> str:
    """The store a command uses: ``--database``, the environment or the default."""
    return database_url(getattr(arguments, "database", None))


def _open_store(
    arguments: argparse.Namespace, *, may_create: bool = False
) -> peewee.Database:
    """
    The migrated store of ``--database``, for the token commands.

    A SQLite file that does not exist yet is refused unless ``may_create``
    and ``--create`` are given: opening it would make a new, empty store.
    """
    url = _database_url(arguments)
    path = sqlite_path(url)
    if path is not None and url not in ("sqlite:///", "sqlite:///:memory:"):
        wanted = may_create and getattr(arguments, "create", False)
        if not Path(path).exists() and not wanted:
            how = (
                "pass --create to make a new store there"
                if may_create
                else "make a new store with `cavra migrate`"
            )
            raise StoreError(
                f"there is no store at {path}; check --database (or "
                f"CAVRA_DATABASE_URL) for a mistake, or {how}"
            )
    database = open_database(url)
    migrate(database)
    return database


def command_tokens_create(arguments: argparse.Namespace) -> int:
    database = _open_store(arguments, may_create=True)
    with database.connection_context():
        token, document = identity.create_token(arguments.name, arguments.role)
    # The token alone on standard output, so that it can be captured.
    print(token)
    print(
        f"token {document['token_id']} for {document['name']} (role "
        f"{document['role']}); it will not be shown again, so keep it now",
        file=sys.stderr,
    )
    return 0


def command_tokens_list(arguments: argparse.Namespace) -> int:
    database = _open_store(arguments)
    with database.connection_context():
        tokens = identity.list_tokens()
    if arguments.json:
        _print_json({"tokens": tokens})
        return 0
    _print_table(
        ["token", "name", "role", "created", "revoked"],
        [
            [
                t["token_id"],
                t["name"],
                t["role"],
                t["created_at"],
                t["revoked_at"] or "-",
            ]
            for t in tokens
        ],
    )
    return 0


def command_tokens_revoke(arguments: argparse.Namespace) -> int:
    database = _open_store(arguments)
    with database.connection_context():
        document = identity.revoke_token(arguments.token)
    print(
        f"token {document['token_id']} ({document['name']}) revoked at "
        f"{document['revoked_at']}"
    )
    return 0


def command_plan(arguments: argparse.Namespace) -> int:
    request: dict[str, Any] = {"generated_by": _actor(arguments)}
    policy = _policy(arguments.policy)
    if policy:
        request["retry_policy"] = policy
    with _engine(arguments) as engine:
        plan = engine.plan_retries(request)
        decisions = list(engine.iter_plan_decisions(plan["retry_plan_id"]))
    if arguments.json:
        _print_json({**plan, "retry_decisions": decisions})
        return 0
    print(
        f"retry plan {plan['retry_plan_id']}  alert {plan['alert_level']}\n"
        f"  hash {plan['plan_hash']}\n"
        f"  {plan['decision_count']} decisions: {plan['retryable_count']} retry, "
        f"{plan['waiting_count']} wait, {plan['suppressed_count']} suppress"
    )
    if decisions:
        print()
        _print_table(
            ["lineage", "connector", "action", "reason", "attempts", "not before"],
            [
                [
                    d["lineage_id"],
                    d["connector_id"],
                    d["action"],
                    d["reason"],
                    f"{d['retry_count']}/{d['max_retry_attempts']}",
                    d["not_before"] or "-",
                ]
                for d in decisions
            ],
        )
    return 0


def command_worker_run(arguments: argparse.Namespace) -> int:
    request: dict[str, Any] = {
        "generated_by": _actor(arguments),
        "dry_run": not arguments.execute,
        "max_retry_deliveries": arguments.max_retry_deliveries,
        "schedule": {"interval_minutes": arguments.interval_minutes},
    }
    policy = _policy(arguments.policy)
    if policy:
        request["retry_policy"] = policy
    with _engine(arguments) as engine:
        run = engine.run_worker(request)
    if arguments.json:
        _print_json(run)
        return 0
    _print_run(run)
    return 0


def command_worker_serve(arguments: argparse.Namespace) -> int:
    """Serve until stopped; exit 0 once a stop signal's run in progress is done."""
    if arguments.cron is not None:
        schedule: Schedule = cron(arguments.cron)
    elif arguments.interval_minutes is not None:
        schedule = every(f"{arguments.interval_minutes}m")
    else:
        schedule = every("60m" if arguments.every is None else arguments.every)
    if not 1 <= arguments.max_retry_deliveries <= MAX_SERVICE_DELIVERIES:
        raise CavraError(f"--max must be between 1 and {MAX_SERVICE_DELIVERIES}")
    if not 1 <= arguments.lease <= 3600:
        raise CavraError("--lease must be between 1 and 3600 seconds")
    if not 1 <= arguments.batch <= 1000:
        raise CavraError("--batch must be between 1 and 1000")
    if arguments.worker_id is not None and not WORKER_ID.fullmatch(arguments.worker_id):
        raise CavraError(
            "--worker-id must be 1 to 100 letters, digits, '.', '_', ':' or '-', "
            "starting with a letter or digit"
        )
    leases = Leases(
        worker_id=arguments.worker_id or default_worker_id(),
        lease_seconds=arguments.lease,
        batch_size=arguments.batch,
        store_process=arguments.bookkeeping == "process",
    )
    request: dict[str, Any] = {
        "generated_by": _actor(arguments),
        "dry_run": not arguments.execute,
        # The API's own cap; the service's --max goes in max_deliveries.
        "max_retry_deliveries": min(100, arguments.max_retry_deliveries),
    }
    policy = _policy(arguments.policy)
    if policy:
        request["retry_policy"] = policy
    # The request is checked once here, so a mistake stops the start instead
    # of failing every window.
    validation.check(
        "worker_run_request",
        {**request, "trigger": "schedule", "schedule": {"cadence": schedule.cadence}},
    )
    with _engine(arguments) as engine:
        service = WorkerService(
            engine,
            schedule,
            request,
            catch_up=arguments.catch_up,
            leases=leases,
            max_deliveries=arguments.max_retry_deliveries,
        )
        log.info(
            "worker service started cadence=%s dry_run=%s max=%d worker_id=%s "
            "lease=%s batch=%d bookkeeping=%s database=%s",
            schedule.cadence.replace(" ", "_"),
            request["dry_run"],
            arguments.max_retry_deliveries,
            leases.worker_id,
            leases.lease_seconds,
            leases.batch_size,
            arguments.bookkeeping,
            describe_url(engine.database_url),
        )
        if leases.store_process and arguments.execute:
            # Started now rather than at the first live window: a store
            # process that cannot start stops the service here, with why.
            try:
                engine.executions.store_process(leases)
            except StoreProcessFailed as error:
                raise CavraError(f"{error}; or run with --bookkeeping thread") from None
        service.serve(
            ready=lambda: _announce(
                f"cavra worker serving {schedule.cadence} "
                f"({'LIVE' if arguments.execute else 'dry'} runs)"
            )
        )
    return 0


def _announce(line: str) -> None:
    """One line on standard output, for a supervisor or a test to wait for."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def command_worker_runs(arguments: argparse.Namespace) -> int:
    dry_run = True if arguments.dry_run else False if arguments.live else None
    if not 1 <= arguments.limit <= 500:
        raise CavraError("--limit must be between 1 and 500")
    with _engine(arguments) as engine:
        page = engine.list_runs(dry_run=dry_run, limit=arguments.limit)
    if arguments.json:
        _print_json(page)
        return 0
    if not page["items"]:
        print("no worker runs yet")
        return 0
    _print_runs_table(page["items"])
    return 0


def command_connectors_list(arguments: argparse.Namespace) -> int:
    with _engine(arguments) as engine:
        listing = engine.list_connectors()
    if arguments.json:
        _print_json(listing)
        return 0
    _print_table(
        ["connector", "type", "endpoint", "state", "failures", "last failure"],
        [
            [
                c["connector_id"],
                c["type"],
                c["endpoint"] or "-",
                c["state"]
                + (f" ({c['state_reason']})" if c["state"] != "active" else ""),
                c["consecutive_failures"],
                c["last_failure_class"] or "-",
            ]
            for c in listing["items"]
        ],
    )
    return 0


def command_connectors_check(arguments: argparse.Namespace) -> int:
    """Exit 0 when every checked connector passes, 1 when one fails."""
    with _engine(arguments) as engine:
        ids = arguments.connector_ids or list(engine.connectors)
        _require_connectors(engine, ids)
        results = [engine.probe_connector(connector_id) for connector_id in ids]
    if arguments.json:
        _print_json({"items": results})
    else:
        for result in results:
            verdict = "ok" if result["ok"] else "FAILED"
            print(f"{result['connector_id']}: {verdict}")
            for check in result["checks"]:
                mark = "ok  " if check["ok"] else "FAIL"
                print(f"  {mark} {check['name']}: {check['detail']}")
    return 0 if all(result["ok"] for result in results) else 1


def command_connectors_resume(arguments: argparse.Namespace) -> int:
    with _engine(arguments) as engine:
        _require_connectors(engine, [arguments.connector_id])
        before = engine.get_connector(arguments.connector_id)["state"]
        connector = engine.resume_connector(
            arguments.connector_id, {"generated_by": _actor(arguments)}
        )
    print(f"{connector['connector_id']}: {before} -> {connector['state']}")
    return 0


def _require_connectors(engine: Engine, connector_ids: list[str]) -> None:
    """Refuse ids that name no configured connector, before anything is done."""
    unknown = [cid for cid in connector_ids if cid not in engine.connectors]
    if unknown:
        raise CavraError(
            f"no connector {unknown[0]!r} is configured; `cavra connectors list` "
            "shows the configured ones (the tables of --connectors or "
            "CAVRA_CONNECTORS)"
        )


def command_evidence_export(arguments: argparse.Namespace) -> int:
    with Engine(arguments.database, arguments.connectors) as engine:
        if arguments.output is None:
            count = _export_to_stdout(engine)
        else:
            count = _export_to_file(engine, arguments.output)
    if arguments.output is not None:
        print(f"exported {count} evidence entries to {arguments.output}")
    return 0


def _export_to_stdout(engine: Engine) -> int:
    # UTF-8 whatever the locale: entries hold names as they were given.
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        return engine.evidence.export(sys.stdout)
    sys.stdout.flush()
    handle = io.TextIOWrapper(buffer, encoding="utf-8", newline="\n")
    try:
        return engine.evidence.export(handle)
    finally:
        handle.flush()
        handle.detach()


def _export_to_file(engine: Engine, output: str) -> int:
    """Write next to ``output`` and rename: a failed export leaves no part behind."""
    target = Path(output)
    partial = target.with_name(f".{target.name}.{os.getpid()}.partial")
    try:
        with open(partial, "w", encoding="utf-8", newline="\n") as handle:
            count = engine.evidence.export(handle)
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return count


class UnreadableExport(Exception):
    """An export that cannot be checked: unreadable, or a line that is not JSON."""


class _ExportLines:
    """The entries of an export file, one per line, counted as they are read."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.count = 0

    def __iter__(self) -> Iterator[Any]:
        try:
            with open(self.path, "rb") as handle:
                for number, line in enumerate(handle, start=1):
                    self.count = number
                    yield self._parse(line, number)
        except OSError as error:
            raise UnreadableExport(
                f"cannot read {self.path}: {error.strerror or error}"
            ) from None

    def _parse(self, line: bytes, number: int) -> Any:
        try:
            return json.loads(line.decode("utf-8"), object_pairs_hook=_unique_keys)
        except UnicodeDecodeError:
            problem = "is not UTF-8"
        except _RepeatedKey as error:
            problem = f"repeats the key {error.key!r}"
        except ValueError:
            problem = "is not JSON"
        except RecursionError:
            raise UnreadableExport(
                f"cannot read line {number} of {self.path}: its JSON is nested "
                "too deep for an entry"
            ) from None
        raise UnreadableExport(
            f"{self.path} line {number} {problem}; an export holds one JSON "
            "object per line, as `cavra evidence export` writes it"
        )


class _RepeatedKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object of an export line; a key given twice is refused, not overwritten."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return document


def command_evidence_verify(arguments: argparse.Namespace) -> int:
    """Exit 0 when the log is intact, 1 when it is broken, 2 when it is unreadable."""
    if arguments.store:
        with Engine(arguments.database, arguments.connectors) as engine:
            report = engine.evidence.verify()
        where = "the store"
    else:
        lines = _ExportLines(arguments.file)
        documents = iter(lines)
        try:
            checked, claimed = evidence.verify_export(documents)
            # The rest of the file is read too: it is counted, and a line
            # that is not JSON makes the file unreadable wherever it is.
            for _ in documents:
                pass
        except UnreadableExport as error:
            print(f"cavra: {error}", file=sys.stderr)
            return 2
        if lines.count == 0:
            print(
                f"cavra: {arguments.file} is empty; an export holds its entries "
                "and a closing line, as `cavra evidence export` writes it",
                file=sys.stderr,
            )
            return 2
        count = claimed if claimed is not None else lines.count
        report = evidence.verification_document(checked, count, datetime.now(UTC))
        where = "line"
    if arguments.json:
        _print_json(report)
    else:
        print(_verification_line(report, where))
    return 0 if report["intact"] else 1


def _verification_line(report: dict[str, Any], where: str) -> str:
    if report["intact"]:
        return (
            f"intact: {report['verified_entry_count']} entries, "
            f"last hash {report['last_entry_hash'] or 'none'}"
        )
    broken = report["first_broken_entry"]
    sequence = broken["sequence"] if broken["sequence"] is not None else "?"
    named = " ".join(v for v in (broken["kind"], broken["subject_id"]) if v)
    position = (
        f" (line {report['verified_entry_count'] + 1})" if where == "line" else ""
    )
    return (
        f"broken at entry {sequence}{position}"
        + (f" ({named})" if named else "")
        + f": {broken['problem']}, {broken['detail']}; "
        f"the {report['verified_entry_count']} entries before it are intact"
    )


def command_dashboard(arguments: argparse.Namespace) -> int:
    with _engine(arguments) as engine:
        board = engine.dashboard()
    if arguments.json:
        _print_json(board)
        return 0
    print(f"alert level: {board['alert_level']}")
    _print_table(
        ["figure", "value"],
        [
            ["retryable now", board["retryable_count"]],
            ["waiting", board["waiting_count"]],
            ["suppressed", board["suppressed_count"]],
            ["worker runs", board["run_count"]],
            ["dry runs", board["dry_run_count"]],
            ["live runs", board["executed_count"]],
            ["selected retries (all runs)", board["selected_retry_count"]],
            ["paused connectors", board["paused_connector_count"]],
        ],
    )
    if board["latest_runs"]:
        print("\nlatest runs")
        _print_runs_table(board["latest_runs"])
    return 0


def _print_run(run: dict[str, Any]) -> None:
    summary = run["summary"]
    mode = "dry run" if run["dry_run"] else "LIVE run"
    schedule = run["schedule"]
    print(
        f"worker {mode} {run['run_id']}\n"
        f"  window {schedule['window_start']} - {schedule['window_end']}\n"
        f"  {summary['retryable_count']} retryable, {summary['waiting_count']} "
        f"waiting, {summary['suppressed_count']} suppressed; "
        f"{summary['selected_retry_count']} selected, "
        f"{summary['executed_count']} executed, {summary['skipped_count']} skipped"
    )
    for note in run["notes"]:
        print(f"  note: {note}")
    if run["selected_retries"]:
        print()
        _print_table(
            ["lineage", "connector", "next attempt", "outcome", "window closes"],
            [
                [
                    s["lineage_id"],
                    s["connector_id"],
                    s["next_attempt_number"],
                    s["outcome"],
                    s["not_after"],
                ]
                for s in run["selected_retries"]
            ],
        )


def _print_runs_table(runs: list[dict[str, Any]]) -> None:
    _print_table(
        ["run", "mode", "started", "retryable", "selected", "executed"],
        [
            [
                r["run_id"],
                "dry" if r["dry_run"] else "live",
                r["started_at"],
                r["summary"]["retryable_count"],
                r["summary"]["selected_retry_count"],
                r["summary"]["executed_count"],
            ]
            for r in runs
        ],
    )


def _print_table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [[str(value) for value in row] for row in rows]
    widths = [
        max(len(header), *(len(row[i]) for row in cells)) if cells else len(header)
        for i, header in enumerate(headers)
    ]
    line: Callable[[list[str]], str] = lambda values: "  ".join(  # noqa: E731
        value.ljust(width) for value, width in zip(values, widths, strict=True)
    ).rstrip()
    print(line(headers))
    print(line(["-" * width for width in widths]))
    for row in cells:
        print(line(row))


def _print_json(document: Any) -> None:
    json.dump(document, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def _print_problem(error: CavraError, arguments: argparse.Namespace) -> None:
    if arguments.log_format == "json":
        log.error("%s", error.detail)
        return
    print(f"cavra: {error.detail}", file=sys.stderr)
    for problem in error.problems:
        where = problem.parameter or problem.pointer or "(document)"
        print(f"  {where}: {problem.detail}", file=sys.stderr)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
