"""Use cases. One public function = one transaction; the acting user is always an argument.

Services never read `flask.request` or `current_user`; they raise `errors.DomainError`s.
"""
