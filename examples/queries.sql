-- DuckDB over the Parquet output of `annotator annotate ... -o examples/output/entities.parquet`.
-- Run from the repository root: duckdb < examples/queries.sql (the test runs it with duckdb in Python)

-- Top entities per type
SELECT label, text, count(*) AS mentions
FROM 'examples/output/entities.parquet'
GROUP BY label, text
QUALIFY row_number() OVER (PARTITION BY label ORDER BY count(*) DESC, text) <= 3
ORDER BY label, mentions DESC, text;

-- Entities per document
SELECT doc_id, count(*) AS entities, count(DISTINCT label) AS types
FROM 'examples/output/entities.parquet'
GROUP BY doc_id
ORDER BY entities DESC, doc_id;
