-- an admin's deprecation notice on a repository: pulls carry it as a Warning header.
-- It lives on the repository row, so it goes when the repository does.
ALTER TABLE repositories ADD COLUMN deprecation TEXT;
