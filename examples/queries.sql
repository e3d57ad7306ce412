-- DuckDB over the Parquet output of `annotator annotate ... -o examples/output/entities.parquet`.
-- Run from the repository root with duckdb's Python module (a dev dependency, installed by
-- make install): duckdb.sql(open('examples/queries.sql').read()) prints the last query, and
-- the test runs each one. No column name needs quoting.

-- Top entities per type
SELECT label, entity_text, count(*) AS mentions
FROM 'examples/output/entities.parquet'
GROUP BY label, entity_text
QUALIFY row_number() OVER (PARTITION BY label ORDER BY count(*) DESC, entity_text) <= 3
ORDER BY label, mentions DESC, entity_text;

-- Where each entity is: offsets into the document text, and the run that wrote the row
SELECT doc_id, start_char, end_char, entity_text, label, run_id, model_sha
FROM 'examples/output/entities.parquet'
ORDER BY doc_id, start_char
LIMIT 5;

-- Entities per document
SELECT doc_id, count(*) AS entities, count(DISTINCT label) AS types
FROM 'examples/output/entities.parquet'
GROUP BY doc_id
ORDER BY entities DESC, doc_id;
