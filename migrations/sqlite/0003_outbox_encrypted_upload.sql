-- A recording for an encrypted room is uploaded encrypted (issue 15): the key,
-- IV and hash of that upload (the JSON of matrix-sdk-crypto's
-- MediaEncryptionInfo) are kept beside its mxc_uri, so a crash between upload
-- and post neither uploads again nor loses the key the voice message needs.
-- NULL: no upload yet, or a plaintext one (a room without encryption).
ALTER TABLE outbox ADD COLUMN mxc_encryption TEXT;
