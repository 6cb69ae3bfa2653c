-- A tenant's retention in seconds: its messages older than that are never served and are deleted in the
-- background. NULL follows RETENTION_DEFAULT, 0 keeps them forever.
ALTER TABLE tenants ADD COLUMN max_age_seconds bigint CHECK (max_age_seconds >= 0);
