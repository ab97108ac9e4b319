"""Control: principals and keys, teams, roles and grants, rate limits; one policy layer enforces them."""
