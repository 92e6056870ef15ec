"""User-facing programs: gitsieve, actorctl, the runner, bench and accuracy."""
