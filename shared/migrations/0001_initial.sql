-- The ledger: task definitions (with their version history), tasks, attempts and API keys.

CREATE TABLE task_definitions (
    id                    text PRIMARY KEY,
    version               text NOT NULL,
    name                  text NOT NULL,
    description           text NOT NULL DEFAULT '',
    type                  text NOT NULL,
    input_schema          jsonb NOT NULL,
    output_schema         jsonb NOT NULL,
    timeout_ms            integer NOT NULL,
    retry_policy          jsonb NOT NULL,
    executor              text NOT NULL,
    security_context      jsonb NOT NULL DEFAULT '{}',
    resource_requirements jsonb NOT NULL DEFAULT '{}',
    default_config        jsonb NOT NULL DEFAULT '{}',
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX task_definitions_type ON task_definitions (type);

-- Every version ever published, so a republished definition keeps its history.
CREATE TABLE task_definition_versions (
    id            text NOT NULL,
    version       text NOT NULL,
    document      jsonb NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, version)
);

CREATE TABLE tasks (
    id                   uuid PRIMARY KEY,
    owner                text NOT NULL,
    task_definition_id   text NOT NULL,
    definition_version   text NOT NULL,
    workflow_instance_id text,
    type                 text NOT NULL,
    status               text NOT NULL,
    priority             smallint NOT NULL DEFAULT 1,
    executor             text NOT NULL,
    input                jsonb NOT NULL,
    output               jsonb,
    error                jsonb,
    timeout_ms           integer NOT NULL,
    retry_policy         jsonb NOT NULL,
    attempts             integer NOT NULL DEFAULT 0,
    worker_lost_count    integer NOT NULL DEFAULT 0,
    start_time           timestamptz,
    end_time             timestamptz,
    worker_host          text,
    worker_pid           integer,
    lease_expires_at     timestamptz,
    next_attempt_at      timestamptz,
    published_at         timestamptz,
    deadline_at          timestamptz,
    cancel_requested_at  timestamptz,
    cancel_reason        text,
    cancelled_by         text,
    cancel_force         boolean NOT NULL DEFAULT false,
    progress             jsonb,
    source               text NOT NULL DEFAULT 'tasks',
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tasks_status_known CHECK (status IN
        ('PENDING', 'RUNNING', 'RETRYING', 'COMPLETED', 'FAILED', 'TIMED_OUT', 'CANCELLED'))
);
-- Listing: newest first per owner, with the common filters.
CREATE INDEX tasks_owner_created ON tasks (owner, created_at DESC, id DESC);
CREATE INDEX tasks_created ON tasks (created_at DESC, id DESC);
CREATE INDEX tasks_status_created ON tasks (status, created_at DESC, id DESC);
CREATE INDEX tasks_definition_created ON tasks (task_definition_id, created_at DESC, id DESC);
CREATE INDEX tasks_type_created ON tasks (type, created_at DESC, id DESC);
CREATE INDEX tasks_workflow ON tasks (workflow_instance_id, created_at DESC)
    WHERE workflow_instance_id IS NOT NULL;
-- The sweeper's scans stay small: only rows that are still moving.
CREATE INDEX tasks_sweep_waiting ON tasks (next_attempt_at, published_at)
    WHERE status IN ('PENDING', 'RETRYING');
CREATE INDEX tasks_sweep_running ON tasks (lease_expires_at) WHERE status = 'RUNNING';
CREATE INDEX tasks_deadline ON tasks (deadline_at)
    WHERE deadline_at IS NOT NULL AND status IN ('PENDING', 'RUNNING', 'RETRYING');

CREATE TABLE task_attempts (
    task_id     uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    attempt     integer NOT NULL,
    status      text NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now(),
    ended_at    timestamptz,
    worker_host text,
    worker_pid  integer,
    error       jsonb,
    PRIMARY KEY (task_id, attempt)
);

CREATE TABLE idempotency_keys (
    owner        text NOT NULL,
    key          text NOT NULL,
    request_hash text NOT NULL,
    task_id      uuid NOT NULL,
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (owner, key)
);
CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at);

CREATE TABLE api_keys (
    id           text PRIMARY KEY,
    name         text NOT NULL,
    owner        text NOT NULL,
    permissions  text[] NOT NULL,
    key_hash     text NOT NULL,
    rate_limit   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);

CREATE TABLE task_logs (
    task_id    uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    seq        bigserial,
    attempt    integer NOT NULL,
    level      text NOT NULL,
    message    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, seq)
);
