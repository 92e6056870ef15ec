"""The only place git is spawned: the gateway, HEAD, committer, integrity."""
