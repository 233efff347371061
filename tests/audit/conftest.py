from tests.api.conftest import (  # noqa: F401  (the API tests' fixtures, reused)
    api,
    funded,
    jwt_settings,
    make_token,
    own_program,
    public_pem,
    rsa_key,
)
