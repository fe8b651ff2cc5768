-- fixture: failing selftest
return { selftest = function() return false, "nope" end }
