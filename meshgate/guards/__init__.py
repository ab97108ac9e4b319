"""Guards: detectors (PII, secrets, injection, moderation, output filters, custom ones) as a library,
policies that act on their findings, the pipeline step that applies them to every call, and the
human review queue. See docs/guards.md."""
