-- runstream store schema, version 2: a per-run JSON copy of the current summaries
-- (runs.cells), kept in step with run_values by the store in the same transaction,
-- so the run table of a proposal is one row per run to read (10,000 x 50 well under 1 s).
--
-- Cell encoding (JSON): numbers, strings, booleans and null as themselves; values JSON
-- cannot hold are objects with one "$" key: {"$f": "NaN"} (non-finite float),
-- {"$i": "123..."} (integer beyond int64), {"$c": [re, im]} (complex),
-- {"$b": "trendline" | "thumbnail" | "numpy"} (binary summary in the run file).

CREATE FUNCTION runstream_cell(
    kind text, vi bigint, vf double precision, vim double precision, vb boolean, vt text,
    stype text
) RETURNS json LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE kind
        WHEN 'int' THEN to_json(vi)
        WHEN 'float' THEN CASE
            WHEN vf IN ('NaN'::float8, 'Infinity'::float8, '-Infinity'::float8)
                THEN json_build_object('$f', vf::text)
            ELSE to_json(vf) END
        WHEN 'bool' THEN to_json(vb)
        WHEN 'str' THEN to_json(vt)
        WHEN 'bigint' THEN json_build_object('$i', vt)
        WHEN 'complex' THEN json_build_object('$c', json_build_array(vf, vim))
        WHEN 'blob' THEN json_build_object('$b', coalesce(stype, ''))
        ELSE 'null'::json
    END
$$;

CREATE FUNCTION runstream_run_cells(p integer, r integer) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        json_object_agg(
            name,
            runstream_cell(kind, value_int, value_float, value_imag, value_bool, value_text,
                           summary_type)
        )::text,
        '{}')
    FROM run_values WHERE proposal = p AND run = r
$$;

ALTER TABLE runs ADD COLUMN cells text NOT NULL DEFAULT '{}';
UPDATE runs SET cells = runstream_run_cells(proposal, run);
