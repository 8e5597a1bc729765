"""Running the service, not serving it: the launcher and embedded default (`make serve`), its bundled Redis, the
end-to-end demo (`make demo`) and the container health check. Stands on top of everything; nothing in api/,
worker/, service/, db/ or core/ imports it."""
