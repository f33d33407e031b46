-- runstream store schema, version 1.
-- Times: *_at are timestamptz written by the store; start_time / added_at of runs are
-- epoch seconds (float), as DAMNIT keeps them.

CREATE TABLE proposals (
    proposal     integer PRIMARY KEY CHECK (proposal >= 0),
    context_dir  text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE runs (
    proposal    integer NOT NULL REFERENCES proposals ON DELETE CASCADE,
    run         integer NOT NULL CHECK (run >= 0),
    start_time  double precision,
    added_at    double precision NOT NULL,
    raw_seen    boolean NOT NULL DEFAULT false,
    proc_seen   boolean NOT NULL DEFAULT false,
    source      jsonb NOT NULL DEFAULT '{}'::jsonb,
    announced   boolean NOT NULL DEFAULT false,  -- RunAdded was published
    PRIMARY KEY (proposal, run)
);

-- Variables of the context file, and user-editable ones (user_type set).
CREATE TABLE variables (
    proposal      integer NOT NULL REFERENCES proposals ON DELETE CASCADE,
    name          text NOT NULL,
    title         text NOT NULL,
    description   text,
    units         text,
    user_type     text CHECK (user_type IN ('boolean', 'integer', 'number', 'string')),
    data          text NOT NULL DEFAULT 'raw' CHECK (data IN ('raw', 'proc')),
    cluster       boolean NOT NULL DEFAULT false,
    context_hash  text,
    revision      bigint,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (proposal, name)
);

CREATE TABLE tags (
    proposal  integer NOT NULL REFERENCES proposals ON DELETE CASCADE,
    name      text NOT NULL CHECK (name <> ''),
    PRIMARY KEY (proposal, name)
);

-- source: 'context' tags are replaced whenever the context defines the variable again;
-- 'user' tags come from SetTags commands.
CREATE TABLE variable_tags (
    proposal  integer NOT NULL,
    variable  text NOT NULL,
    tag       text NOT NULL,
    source    text NOT NULL CHECK (source IN ('context', 'user')),
    PRIMARY KEY (proposal, variable, tag, source),
    FOREIGN KEY (proposal, variable) REFERENCES variables ON DELETE CASCADE,
    FOREIGN KEY (proposal, tag) REFERENCES tags ON DELETE CASCADE
);

-- The current value of one variable of one run (one row per proposal/run/name).
-- kind says which value column holds the summary:
--   int -> value_int, bigint -> value_text (decimal), float -> value_float,
--   bool -> value_bool, str -> value_text, complex -> value_float + value_imag,
--   blob -> the summary is binary and lives in the run file's .reduced (summary_type says which),
--   none -> no summary (error, cleared, or a result without a summary).
CREATE TABLE run_values (
    proposal        integer NOT NULL,
    run             integer NOT NULL,
    name            text NOT NULL,
    kind            text NOT NULL
        CHECK (kind IN ('int', 'bigint', 'float', 'bool', 'str', 'complex', 'blob', 'none')),
    value_int       bigint,
    value_float     double precision,
    value_imag      double precision,
    value_bool      boolean,
    value_text      text,
    summary_type    text,
    summary_method  text,
    units           text,
    max_diff        double precision,
    bold            boolean,
    background      smallint[],
    error           text,
    error_cls       text,
    cleared         boolean NOT NULL DEFAULT false,
    provenance      text,
    context_hash    text,
    revision        bigint NOT NULL DEFAULT 0,
    result_id       text,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (proposal, run, name),
    FOREIGN KEY (proposal, run) REFERENCES runs ON DELETE CASCADE
);

-- Every value ever written (including the current one and results that lost to a
-- newer revision: superseded = true).
CREATE TABLE run_value_history (
    id              bigserial PRIMARY KEY,
    proposal        integer NOT NULL,
    run             integer NOT NULL,
    name            text NOT NULL,
    kind            text NOT NULL,
    value_int       bigint,
    value_float     double precision,
    value_imag      double precision,
    value_bool      boolean,
    value_text      text,
    summary_type    text,
    summary_method  text,
    units           text,
    max_diff        double precision,
    bold            boolean,
    background      smallint[],
    error           text,
    error_cls       text,
    cleared         boolean NOT NULL DEFAULT false,
    provenance      text,
    context_hash    text,
    revision        bigint NOT NULL DEFAULT 0,
    result_id       text,
    superseded      boolean NOT NULL DEFAULT false,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (proposal, run) REFERENCES runs ON DELETE CASCADE
);
CREATE INDEX run_value_history_lookup ON run_value_history (proposal, run, name, id);

-- Idempotency: every ResultsReady applied, by result_id.
CREATE TABLE applied_results (
    result_id   text PRIMARY KEY,
    proposal    integer NOT NULL,
    run         integer NOT NULL,
    revision    bigint NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE proposal_settings (
    proposal    integer NOT NULL REFERENCES proposals ON DELETE CASCADE,
    key         text NOT NULL,
    value       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (proposal, key)
);

-- The latest state of each processing pass.
CREATE TABLE processing_state (
    processing_id  text PRIMARY KEY,
    request_id     text NOT NULL,
    proposal       integer NOT NULL,
    run            integer NOT NULL,
    trigger        text NOT NULL,
    status         text NOT NULL,
    variable       text,
    reason         text,
    hostname       text,
    slurm_job_id   bigint,
    counts         jsonb NOT NULL DEFAULT '{}'::jsonb,
    event_time     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX processing_state_run ON processing_state (proposal, run);

CREATE TABLE slurm_jobs (
    job_request_id  text PRIMARY KEY,
    proposal        integer NOT NULL,
    run             integer NOT NULL,
    state           text NOT NULL,
    backend         text NOT NULL,
    job_id          bigint,
    exit_status     integer,
    signal          integer,
    log_path        text,
    reason          text,
    event_time      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX slurm_jobs_run ON slurm_jobs (proposal, run);
