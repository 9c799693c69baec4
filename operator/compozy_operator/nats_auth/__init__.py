"""NATS identities of task attempts through nats-server's auth callout (issue 12; opt-in).

* :mod:`.permissions` (pure): exactly what one task attempt may publish and subscribe to.
* :mod:`.jwt`: the NATS JWT format (user, authorization request and response claims) on nkeys.
* :mod:`.decision` (pure): a TokenReview result and a pod -> the attempt's grant, or a refusal.
* :mod:`.callout`: the service answering ``$SYS.REQ.USER.AUTH`` with a user JWT per attempt.

See docs/security.md, "NATS identities and the auth callout".
"""
