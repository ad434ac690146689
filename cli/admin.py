"""Administration commands that talk to Postgres directly: migrate, keys, token."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import click

from cli.base import ledger, load_settings
from config.settings import parse_rate
from shared import schema, store
from shared.credentials import (
    PERMISSIONS,
    announce_revocation,
    check_permissions,
    issue_key,
    mint_token,
)
from shared.errors import TaskexecError


def _permissions(raw: str) -> list[str]:
    values = [p.strip() for p in raw.split(",") if p.strip()]
    unknown = check_permissions(values)
    if unknown or not values:
        raise click.BadParameter(
            f"unknown permission(s) {', '.join(unknown) or '(none given)'}; "
            f"known: *, {', '.join(PERMISSIONS)}"
        )
    return values


@click.command()
def migrate() -> None:
    """Apply pending database migrations (safe to run twice, or from two processes)."""
    settings = load_settings()
    try:
        applied = schema.migrate(settings.database_url)
    except TaskexecError as exc:
        raise click.ClickException(exc.message) from exc
    click.echo(
        f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else "")
    )


@click.group()
def keys() -> None:
    """Create, list and revoke API keys."""


@keys.command("create")
@click.option("--name", required=True, help="A label for the key, e.g. the service using it.")
@click.option(
    "--permissions", required=True, help="Comma-separated, e.g. tasks:execute,tasks:read or *."
)
@click.option("--owner", default=None, help="Tenant that owns the key's tasks (default: the name).")
@click.option("--rate-limit", default=None, help="Override the default limit, e.g. 5000/minute.")
@click.option(
    "--max-running",
    type=click.IntRange(min=1),
    default=None,
    help="At most N of the owner's tasks RUNNING at once (default: unlimited).",
)
def keys_create(
    name: str, permissions: str, owner: str | None, rate_limit: str | None, max_running: int | None
) -> None:
    """Create a key; it is printed once, alone on the last line."""
    settings = load_settings()
    perms = _permissions(permissions)
    if rate_limit is not None:
        try:
            parse_rate(rate_limit)
        except ValueError as exc:
            raise click.BadParameter(f"{rate_limit!r} is not a rate such as 5000/minute") from exc
    with ledger(settings.database_url) as conn:
        key, secret = issue_key(
            conn,
            name=name,
            owner=owner or name,
            permissions=perms,
            rate_limit=rate_limit,
            max_running=max_running,
        )
    click.echo(f"created key {key.id} for owner {key.owner} with {', '.join(perms)}", err=True)
    click.echo("store it now: it is not shown again", err=True)
    click.echo(secret)


@keys.command("list")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def keys_list(output: str) -> None:
    """List keys (never their secrets)."""
    settings = load_settings()
    with ledger(settings.database_url) as conn:
        rows = store.list_api_keys(conn)
    docs: list[dict[str, Any]] = [
        {
            "id": k.id,
            "name": k.name,
            "owner": k.owner,
            "permissions": k.permissions,
            "rateLimit": k.rate_limit,
            "maxRunning": k.max_running,
            "createdAt": k.created_at.isoformat(),
            "lastUsedAt": k.last_used_at.isoformat() if k.last_used_at else None,
            "revokedAt": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in rows
    ]
    if output == "json":
        click.echo(json.dumps(docs, indent=2))
        return
    click.echo(
        f"{'ID':<14} {'NAME':<20} {'OWNER':<16} {'CREATED':<17} {'LAST USED':<17} "
        f"{'REVOKED':<17} {'MAX RUNNING':<11} PERMISSIONS"
    )
    for k, d in zip(rows, docs, strict=True):
        most = "-" if k.max_running is None else str(k.max_running)
        click.echo(
            f"{d['id']:<14} {d['name'][:20]:<20} {d['owner'][:16]:<16} {_when(k.created_at):<17} "
            f"{_when(k.last_used_at):<17} {_when(k.revoked_at, 'no'):<17} {most:<11} "
            f"{','.join(d['permissions'])}"
        )


def _when(moment: datetime | None, never: str = "never") -> str:
    """A timestamp for the keys table: UTC, to the minute."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%MZ") if moment else never


@keys.command("revoke")
@click.argument("key_id")
def keys_revoke(key_id: str) -> None:
    """Revoke a key by its id; every API process refuses it within a second."""
    settings = load_settings()
    with ledger(settings.database_url) as conn:
        revoked = store.revoke_api_key(conn, key_id)
    if not revoked:
        raise click.ClickException(f"no active key {key_id}")
    # Committed: the API processes forget their cached copy now (else within 0.9 s).
    announce_revocation(settings.redis_url, key_id)
    click.echo(f"revoked {key_id}")


@click.command()
@click.option("--subject", required=True, help="The token's sub: the tenant owning its tasks.")
@click.option("--permissions", required=True, help="Comma-separated permissions, or *.")
@click.option("--ttl", default=3600, show_default=True, help="Seconds until it expires.")
def token(subject: str, permissions: str, ttl: int) -> None:
    """Print a JWT signed with TASKEXEC_JWT_SECRET (HS256)."""
    settings = load_settings()
    if settings.jwt_algorithm != "HS256" or not settings.jwt_secret:
        raise click.ClickException(
            "minting needs TASKEXEC_JWT_ALGORITHM=HS256 and TASKEXEC_JWT_SECRET"
        )
    click.echo(
        mint_token(
            settings.jwt_secret,
            subject,
            _permissions(permissions),
            ttl=ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )
