-- Allocation-heavy sqlite3 workload with deterministic output: a few
-- hundred thousand rows inserted, indexed, joined, grouped and sorted.
PRAGMA cache_size = -32000;
PRAGMA journal_mode = WAL;
CREATE TABLE items(id INTEGER PRIMARY KEY, grp INTEGER, name TEXT, val REAL, blob BLOB);
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000)
INSERT INTO items(id, grp, name, val, blob)
SELECT i, (i * 7919) % 1000, 'name-' || ((i * 104729) % 200000) || substr('abcdefghijklmnopqrstuvwxyz', 1 + i % 26),
       (i % 1000) / 7.0, zeroblob(i % 200)
FROM n;
COMMIT;
CREATE INDEX items_grp ON items(grp, val);
CREATE INDEX items_name ON items(name);
SELECT count(*), sum(grp), round(sum(val), 3), sum(length(blob)) FROM items;
SELECT grp, count(*), round(avg(val), 4), min(name), max(name) FROM items GROUP BY grp ORDER BY count(*) DESC, grp LIMIT 10;
SELECT name FROM items WHERE name LIKE 'name-12345%' ORDER BY name;
CREATE TABLE groups AS SELECT grp, count(*) AS c, group_concat(id, ',') AS ids FROM items WHERE id % 10 = 0 GROUP BY grp;
SELECT g.grp, g.c, length(g.ids), count(i.id) FROM groups g JOIN items i ON i.grp = g.grp
 WHERE g.grp < 5 GROUP BY g.grp ORDER BY g.grp;
UPDATE items SET name = upper(name) || name WHERE id % 3 = 0;
DELETE FROM items WHERE id % 5 = 0;
SELECT count(*), count(DISTINCT grp), sum(length(name)) FROM items;
SELECT id, name FROM items ORDER BY name DESC, id LIMIT 5;
VACUUM;
PRAGMA integrity_check;
