"""The store's SQL schema (current and the version-5 layout migrations start from) and how to
run a script inside an open transaction."""

from __future__ import annotations

import sqlite3

SCHEMA_VERSION = 10  # 2: the change log, origins and peers of site sync; 3: derived features; 4: peers' audit heads;
# 5: relayed changes (a change's origin site and the peer it came through); 6: subjects keyed by refs, ids sealed;
# 7: adjudication cases, their held captures, and encounters attached to subjects; 8: decisions travel (a
# change names its case), import keys; 9: capture facts and refused captures (the data-quality report), audit checkpoints;
# 10: when a peer's bundle was last refused (tambua doctor)

PEERS = """
-- Per peer site: its changes applied here, ours it acknowledged, and the sync history.
CREATE TABLE IF NOT EXISTS peers (
    site TEXT PRIMARY KEY,
    applied_seq INTEGER NOT NULL DEFAULT 0,
    acked_seq INTEGER NOT NULL DEFAULT 0,
    last_import_ms INTEGER,
    last_export_ms INTEGER,
    last_ack_ms INTEGER,
    refused INTEGER NOT NULL DEFAULT 0,
    gaps INTEGER NOT NULL DEFAULT 0,
    audit_seq INTEGER,
    audit_hash TEXT,
    last_refused_ms INTEGER
);
"""
CASES = """
-- Adjudication cases (matcher/cases.py). data: the case record (JSON) sealed, bound to its id;
-- ref: the held capture's subject id as a ref; the columns beside it are what the queue
-- filters and sorts on.
CREATE TABLE IF NOT EXISTS cases (
    case_id TEXT PRIMARY KEY,
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    state TEXT NOT NULL,
    source TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS cases_queue ON cases (state, created_ms);
CREATE INDEX IF NOT EXISTS cases_by_ref ON cases (partition, ref);
-- Every subject a case names as a candidate (refs): erasing a subject finds its cases here.
CREATE TABLE IF NOT EXISTS case_subjects (
    case_id TEXT NOT NULL REFERENCES cases (case_id) ON DELETE CASCADE,
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    PRIMARY KEY (case_id, ref)
);
CREATE INDEX IF NOT EXISTS case_subjects_by_ref ON case_subjects (partition, ref);
-- The held capture of an open case (pending: searched by enrolments, never by Identify or
-- Verify), sealed like subjects' templates; gone once the case is decided.
CREATE TABLE IF NOT EXISTS case_templates (
    case_id TEXT NOT NULL REFERENCES cases (case_id) ON DELETE CASCADE,
    modality TEXT NOT NULL,
    position INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    data BLOB NOT NULL,
    derived BLOB,
    PRIMARY KEY (case_id, modality, position)
);
-- Sample images kept for adjudication (keep_images): a held capture's, and (keep_images =
-- "all") an enrolled subject's; sealed like templates, erased with their case or subject;
-- a decided case's go after the retention period.
CREATE TABLE IF NOT EXISTS case_images (
    case_id TEXT NOT NULL REFERENCES cases (case_id) ON DELETE CASCADE,
    modality TEXT NOT NULL,
    position INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (case_id, modality, position)
);
CREATE TABLE IF NOT EXISTS subject_images (
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    modality TEXT NOT NULL,
    position INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (partition, ref, modality, position),
    FOREIGN KEY (partition, ref) REFERENCES subjects (partition, ref) ON DELETE CASCADE
);
-- Later captures of an enrolled subject, attached by a "same person" decision (the
-- enrolment itself is encounter 0, in templates); erased with the subject.
CREATE TABLE IF NOT EXISTS encounters (
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    encounter INTEGER NOT NULL,
    case_id TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    modality TEXT NOT NULL,
    position INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (partition, ref, encounter, modality, position),
    FOREIGN KEY (partition, ref) REFERENCES subjects (partition, ref) ON DELETE CASCADE
);
"""
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- ref: HMAC-SHA256 of the subject id under a key derived from the data key (16 bytes); the
-- id itself is sealed in ``id``. Links are refs (hex) of the subjects an enrol-anyway was
-- adjudicated against.
CREATE TABLE IF NOT EXISTS subjects (
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    id BLOB NOT NULL,
    created_ns INTEGER NOT NULL,
    linked TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (partition, ref)
);
CREATE INDEX IF NOT EXISTS subjects_by_ref ON subjects (ref);
CREATE TABLE IF NOT EXISTS templates (
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    modality TEXT NOT NULL,
    position INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    data BLOB NOT NULL,
    derived BLOB,  -- features computed from data (finger: MCC cylinders), sealed like it; NULL: compute
    PRIMARY KEY (partition, ref, modality, position),
    FOREIGN KEY (partition, ref) REFERENCES subjects (partition, ref) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS templates_by_model ON templates (model_id);
-- The changes this site sends peers, numbered without gaps in the transaction that makes
-- them: its own (via '') and those it applied from a peer (via that peer), so a change made
-- at one field site reaches the others through the country server. origin/origin_seq name
-- the site that made it and its number there ('' / 0: this site, this seq). id: the sealed
-- subject id, NULL once nothing needs it (an erased enrolment; a deletion every peer has).
-- case_id: a ``decision`` change's case (its record, in cases, is what the change carries).
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    id BLOB,
    unix_ms INTEGER NOT NULL,
    via TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL DEFAULT '',
    origin_seq INTEGER NOT NULL DEFAULT 0,
    case_id TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS changes_by_ref ON changes (ref);
-- Where an imported subject came from: the site that enrolled it and its change number there.
CREATE TABLE IF NOT EXISTS origins (
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    site TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (partition, ref)
);
-- Subjects enrolled by a bulk import: a keyed hash (like refs) of the record's import key,
-- so that the same record sent again is recognised as enrolled already (idempotent import).
CREATE TABLE IF NOT EXISTS import_keys (
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    key BLOB NOT NULL,
    PRIMARY KEY (partition, ref),
    FOREIGN KEY (partition, ref) REFERENCES subjects (partition, ref) ON DELETE CASCADE
);
-- What each enrolled sample was like (the data-quality report): its quality score and
-- components, image size, who captured it and where. Nothing biometric; erased with the subject.
CREATE TABLE IF NOT EXISTS sample_facts (
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    modality TEXT NOT NULL,
    position INTEGER NOT NULL,
    quality INTEGER NOT NULL,
    components TEXT NOT NULL DEFAULT '{}',
    width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0,
    dpi INTEGER NOT NULL DEFAULT 0,
    operator TEXT NOT NULL DEFAULT '',
    site TEXT NOT NULL DEFAULT '',
    unix_ms INTEGER NOT NULL,
    PRIMARY KEY (partition, ref, modality, position),
    FOREIGN KEY (partition, ref) REFERENCES subjects (partition, ref) ON DELETE CASCADE
);
-- Captures an enrolment refused (failure to enrol): why, of which sample, by whom. No
-- subject is named: the person was not enrolled.
CREATE TABLE IF NOT EXISTS refusals (
    unix_ms INTEGER NOT NULL,
    partition TEXT NOT NULL,
    modality TEXT NOT NULL,
    position INTEGER NOT NULL,
    reason TEXT NOT NULL,
    operator TEXT NOT NULL DEFAULT '',
    site TEXT NOT NULL DEFAULT '',
    width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS refusals_by_time ON refusals (partition, unix_ms);
-- A duplicate audit's progress, sealed (it names subjects): what it searched and found so
-- far, under its partition and threshold; dropped when the audit completes.
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    key TEXT PRIMARY KEY,
    data BLOB NOT NULL,
    updated_ms INTEGER NOT NULL
);
""" + PEERS + """
-- Imported enrolments that need a person's decision (a cross-site duplicate, an id taken);
-- candidates are refs (hex).
CREATE TABLE IF NOT EXISTS flags (
    partition TEXT NOT NULL,
    ref BLOB NOT NULL,
    kind TEXT NOT NULL,
    site TEXT NOT NULL,
    candidates TEXT NOT NULL,
    unix_ms INTEGER NOT NULL,
    PRIMARY KEY (partition, ref, kind, site)
);
""" + CASES

# The layout of versions 1-5 (ids in clear), kept to migrate such stores from.
SCHEMA_V5 = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS subjects (
    partition TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    created_ns INTEGER NOT NULL,
    linked TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (partition, subject_id)
);
CREATE TABLE IF NOT EXISTS templates (
    partition TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    modality TEXT NOT NULL,
    position INTEGER NOT NULL,
    model_id TEXT NOT NULL,
    data BLOB NOT NULL,
    derived BLOB,
    PRIMARY KEY (partition, subject_id, modality, position),
    FOREIGN KEY (partition, subject_id) REFERENCES subjects (partition, subject_id) ON DELETE CASCADE
);
CREATE INDEX IF NOT EXISTS templates_by_model ON templates (model_id);
CREATE TABLE IF NOT EXISTS changes (
    seq INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    partition TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    unix_ms INTEGER NOT NULL,
    via TEXT NOT NULL DEFAULT '',
    origin TEXT NOT NULL DEFAULT '',
    origin_seq INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS origins (
    partition TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    site TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (partition, subject_id)
);
""" + PEERS + """
CREATE TABLE IF NOT EXISTS flags (
    partition TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    site TEXT NOT NULL,
    candidates TEXT NOT NULL,
    unix_ms INTEGER NOT NULL,
    PRIMARY KEY (partition, subject_id, kind, site)
);
"""


def run_script(db: sqlite3.Connection, script: str) -> None:
    """Run a schema script statement by statement (``executescript`` would commit an open
    transaction, and the migration runs one inside its transaction)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            db.execute(statement)
            statement = ""
