-- Lineage in the catalog (issue 12): `ops.datasets.upstream`, what a dataset was built from as its
-- last writer said, from a DATASET_LINEAGE event of the phase that wrote it (the dbt kind sends
-- one per model it writes: payload `{dataset, model, refs, sources, datasets, inputs}`).
--   upstream = the catalog names of `datasets` (the refs written to the lake), then `source:<x>`
--   for each of `sources` (dbt's `source.table`), sorted, without duplicates.
-- Each event replaces the dataset's upstream (lineage as of its last write). Only a dataset of
-- the run's own workspace is touched; an unknown name changes nothing. The payload is untrusted:
-- names that are not dataset or source names, or more than 1000 of them, refuse the batch (400).
-- get_dataset and list_datasets show the column (they answer every column of ops.datasets).
-- docs/catalog.md ("Lineage").

alter table ops.datasets add column upstream text[];
comment on column ops.datasets.upstream is
    'What the dataset was built from (catalog names, and source:<name>), as its last writer said (DATASET_LINEAGE events).';

create function ops_private.record_lineage()
returns trigger
language plpgsql
as $$
declare
    v_names text[];
    v_bad   text;
begin
    if pg_catalog.jsonb_typeof(new.payload -> 'dataset') is distinct from 'string'
       or (new.payload ->> 'dataset') !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$' then
        perform ops_private.fail(400, 'invalid_argument',
            'a DATASET_LINEAGE event''s payload.dataset must be a dataset name (such as gold.odoo.revenue)',
            pg_catalog.jsonb_build_object('argument', 'events.payload.dataset'));
    end if;
    foreach v_bad in array array['datasets', 'sources'] loop
        if new.payload ? v_bad and (pg_catalog.jsonb_typeof(new.payload -> v_bad) is distinct from 'array'
               or pg_catalog.jsonb_array_length(new.payload -> v_bad) > 1000
               or exists (select 1 from pg_catalog.jsonb_array_elements(new.payload -> v_bad) e
                          where pg_catalog.jsonb_typeof(e) <> 'string'
                             or (e #>> '{}') !~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$')) then
            perform ops_private.fail(400, 'invalid_argument',
                pg_catalog.format('a DATASET_LINEAGE event''s payload.%s must be at most 1000 names', v_bad),
                pg_catalog.jsonb_build_object('argument', 'events.payload.' || v_bad));
        end if;
    end loop;
    v_names := array(
        select distinct x from (
            select e #>> '{}' as x from pg_catalog.jsonb_array_elements(coalesce(new.payload -> 'datasets', '[]')) e
            union all
            select 'source:' || (e #>> '{}') from pg_catalog.jsonb_array_elements(coalesce(new.payload -> 'sources', '[]')) e
        ) u order by x);
    update ops.datasets d set upstream = v_names
     where d.workspace_id = new.workspace_id and d.name = new.payload ->> 'dataset';
    return null;
end
$$;

create trigger run_events_lineage after insert on ops.run_events
    for each row when (new.type = 'DATASET_LINEAGE')
    execute function ops_private.record_lineage();

revoke execute on function ops_private.record_lineage() from public, anon, authenticated, service_role;
