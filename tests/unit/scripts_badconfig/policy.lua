-- fixture: config of the wrong type
return { config = { heartbeat_ms = "soon" } }
