"""Who may announce (access lists, passkeys) and what the host site hears (the announce hook)."""
