"""Access control: identities, tokens, namespaces, visibility and push rules."""
