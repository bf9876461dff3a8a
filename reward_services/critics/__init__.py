"""Built-in critics; `reward_services.base.BUILTIN_CRITICS` names each one."""
