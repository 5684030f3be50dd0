# test_pki DIR CN SAN: a throw-away test CA (DIR/ca.pem) and a P-256 server certificate it
# signed (DIR/cert.pem, DIR/key.pem) for CN with subjectAltName SAN (openssl). Sourced by
# bench/lib.sh (ORIGIN=nginx) and bench/compare.sh.
test_pki() {
    local d=$1 cn=$2 san=$3
    openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 2 \
        -subj "/CN=$cn test CA" -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$d/ca.key" -out "$d/ca.pem" 2>/dev/null
    openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -subj "/CN=$cn" \
        -keyout "$d/key.pem" -out "$d/cert.csr" 2>/dev/null
    printf '%s\n' "subjectAltName=$san" "basicConstraints=CA:FALSE" \
        "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$d/ext.cnf"
    openssl x509 -req -in "$d/cert.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" -CAcreateserial \
        -days 2 -extfile "$d/ext.cnf" -out "$d/cert.pem" 2>/dev/null
}
