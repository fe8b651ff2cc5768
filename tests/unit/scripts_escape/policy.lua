-- fixture: require outside the folder
local m = require "../scripts_hooks/policy"
return m
