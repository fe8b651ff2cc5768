-- fixture: runtime error at load
error("bad at load")
return {}
