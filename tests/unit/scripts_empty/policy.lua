-- fixture: no hooks at all
return {}
