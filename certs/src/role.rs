use std::fmt;

/// What a certificate may be used for within the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `ferry-agent`'s server certificate on a host.
    Agent,
    /// A controller or operator client certificate: the only role an agent accepts.
    Controller,
}

impl Role {
    /// The subject OU value that carries the role.
    pub fn as_ou(self) -> &'static str {
        match self {
            Role::Agent => "ferry-agent",
            Role::Controller => "ferry-controller",
        }
    }

    pub fn from_ou(ou: &str) -> Option<Role> {
        match ou {
            "ferry-agent" => Some(Role::Agent),
            "ferry-controller" => Some(Role::Controller),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Agent => "agent",
            Role::Controller => "controller",
        })
    }
}
