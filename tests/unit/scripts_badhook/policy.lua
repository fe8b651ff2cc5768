-- fixture: a hook that is not a function
return { on_message = "yes" }
