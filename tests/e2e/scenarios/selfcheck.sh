#!/usr/bin/env bash
# Proves the SIPp scenarios on their own, without a PBX: each caller against a
# callee (or a selfcheck/ peer playing the PBX) on loopback, including pairs
# that must fail, so that the scenarios' checks are known to bite.
# Exits non-zero if any pair ends otherwise than expected. Run it as root:
# the callers play RTP from a pcap, which SIPp sends on a raw socket.
#
#   tests/e2e/scenarios/selfcheck.sh            # logs go to a temporary directory
#   SELFCHECK_LOGS=/tmp/x tests/e2e/scenarios/selfcheck.sh
set -u

here=$(cd "$(dirname "$0")" && pwd)
logs=${SELFCHECK_LOGS:-$(mktemp -d -t vpbx-sipp-selfcheck.XXXXXX)}
mkdir -p "$logs"
sipp=${VPBX_SIPP:-sipp}
# Addresses no lab part uses, so this can run beside a deployed PBX.
uas_ip=127.0.0.201 uas_port=5090
uac_ip=127.0.0.202 uac_port=5091
pcap=/usr/share/sip-tester/g711a.pcap
seconds=15
failures=0

# Whether something is bound to UDP ip:port (SIPp has opened its socket).
bound() {
    local hex
    hex=$(printf '%02X' $(echo "$1" | tr . ' ' | awk '{print $4, $3, $2, $1}'))
    grep -q " $hex:$(printf '%04X' "$2") " /proc/net/udp
}

# pair NAME WANT_UAS WANT_UAC: run the callee "${uas[@]}" in the background,
# then the caller "${uac[@]}"; WANT is ok (exit 0), fail (any other code) or any.
pair() {
    local name=$1 want_uas=$2 want_uac=$3 uas_pid rc_uas rc_uac verdict i
    local common=(-nostdin -m 1 -timeout "${seconds}s" -timeout_error -trace_err -trace_msg -trace_logs)
    "$sipp" "${common[@]}" -i "$uas_ip" -p "$uas_port" \
        -error_file "$logs/$name.uas.errors" -message_file "$logs/$name.uas.messages" \
        -log_file "$logs/$name.uas.log" "${uas[@]}" </dev/null >"$logs/$name.uas.screen" 2>&1 &
    uas_pid=$!
    for ((i = 0; i < 100; i++)); do bound "$uas_ip" "$uas_port" && break; sleep 0.05; done
    "$sipp" "${common[@]}" -i "$uac_ip" -p "$uac_port" \
        -error_file "$logs/$name.uac.errors" -message_file "$logs/$name.uac.messages" \
        -log_file "$logs/$name.uac.log" "${uac[@]}" "$uas_ip:$uas_port" \
        </dev/null >"$logs/$name.uac.screen" 2>&1
    rc_uac=$?
    wait "$uas_pid"
    rc_uas=$?
    verdict=PASS
    if { [[ $want_uas == ok ]] && ((rc_uas != 0)); } || { [[ $want_uas == fail ]] && ((rc_uas == 0)); } ||
       { [[ $want_uac == ok ]] && ((rc_uac != 0)); } || { [[ $want_uac == fail ]] && ((rc_uac == 0)); }; then
        verdict=FAIL
        failures=$((failures + 1))
    fi
    printf '%s  %-34s callee %-4s (exit %3d)  caller %-4s (exit %3d)\n' \
        "$verdict" "$name" "$want_uas" "$rc_uas" "$want_uac" "$rc_uac"
    if [[ $verdict == FAIL ]]; then
        tail -n 5 "$logs/$name".*.errors 2>/dev/null | sed 's/^/    /'
    fi
}

callee() { uas=(-sf "$here/callee.xml" "$@"); }
caller() { uac=(-sf "$here/$1" "${@:2}"); }

echo "SIPp scenario selfcheck, logs in $logs"

callee -key mode answer -key ring_ms 300 -key hangup remote -key hold_ms 0 \
    -key expect_user +421233999888 -key expect_from +421905111222 -key expect_media "$uac_ip"
caller carrier_call.xml -key did +421233999888 -key caller +421905111222 -key hangup local \
    -key hold_ms 1000 -key audio "$pcap" -key header "P-Asserted-Identity: <sip:+421905111222@$uac_ip>"
pair answered-caller-hangs-up ok ok

callee -key mode answer -key ring_ms 0 -key hangup local -key hold_ms 500 \
    -key expect_user '*' -key expect_from '*' -key expect_media '*'
caller carrier_call.xml -key did 100 -key caller +421905333444 -key hangup remote \
    -key hold_ms 0 -key audio "$pcap" -key header "X-Vpbx-E2E: 1"
pair answered-callee-hangs-up ok ok

callee -key mode busy -key ring_ms 0 -key hangup remote -key hold_ms 0 \
    -key expect_user +421233000111 -key expect_from '*' -key expect_media '*'
caller carrier_call_rejected.xml -key did +421233000111 -key caller +421905111222 \
    -key code 486 -key header "X-Vpbx-E2E: 1"
pair busy-is-rejected-486 ok ok

uas=(-sf "$here/selfcheck/forbidden.xml")
caller carrier_call_rejected.xml -key did +421233000111 -key caller +421211111111 \
    -key code 403 -key header "X-Vpbx-E2E: 1"
pair stranger-is-rejected-403 ok ok

callee -key mode ring -key ring_ms 0 -key hangup remote -key hold_ms 0 \
    -key expect_user 101 -key expect_from '*' -key expect_media '*'
caller carrier_call_cancel.xml -key did 101 -key caller +421905111222 -key ring_ms 500 \
    -key header "X-Vpbx-E2E: 1"
pair ringing-call-is-cancelled ok ok

uas=(-sf "$here/selfcheck/registrar.xml" -key user 100 -key password lab-secret-100)
caller phone_register.xml -key user 100 -key password lab-secret-100 -key expires 60
pair phone-registers ok ok

uas=(-sf "$here/selfcheck/registrar.xml" -key user 100 -key password lab-secret-100)
caller phone_register.xml -key user 100 -key password lab-secret-100 -key expires 0
pair phone-unregisters ok ok

# The checks must bite.
uas=(-sf "$here/selfcheck/registrar.xml" -key user 100 -key password lab-secret-100)
caller phone_register.xml -key user 100 -key password wrong -key expires 60
pair wrong-password-fails-register ok fail

callee -key mode answer -key ring_ms 0 -key hangup remote -key hold_ms 0 \
    -key expect_user +421233999887 -key expect_from '*' -key expect_media '*'
caller carrier_call.xml -key did +421233999888 -key caller +421905111222 -key hangup local \
    -key hold_ms 200 -key audio "$pcap" -key header "X-Vpbx-E2E: 1"
pair wrong-ruri-user-fails-callee fail ok

callee -key mode answer -key ring_ms 0 -key hangup remote -key hold_ms 0 \
    -key expect_user '*' -key expect_from +421905111222 -key expect_media 127.0.0.1
caller carrier_call.xml -key did +421233999888 -key caller +421905111222 -key hangup local \
    -key hold_ms 200 -key audio "$pcap" -key header "X-Vpbx-E2E: 1"
pair wrong-media-address-fails-callee fail ok

callee -key mode answer -key ring_ms 0 -key hangup remote -key hold_ms 0 \
    -key expect_user '*' -key expect_from +421905111223 -key expect_media '*'
caller carrier_call.xml -key did +421233999888 -key caller +421905111222 -key hangup local \
    -key hold_ms 200 -key audio "$pcap" -key header "X-Vpbx-E2E: 1"
pair wrong-caller-id-fails-callee fail ok

callee -key mode answer -key ring_ms 0 -key hangup remote -key hold_ms 0 \
    -key expect_user '*' -key expect_from '*' -key expect_media '*'
caller carrier_call_rejected.xml -key did +421233000222 -key caller +421905111222 \
    -key code 480 -key header "X-Vpbx-E2E: 1"
# The callee answered a call its caller gave up on: how it ends is not this pair's point.
pair answer-fails-rejected-call any fail

uas=(-sf "$here/selfcheck/forbidden.xml")
caller carrier_call_rejected.xml -key did +421233000222 -key caller +421905111222 \
    -key code 480 -key header "X-Vpbx-E2E: 1"
pair other-code-fails-rejected-call ok fail

callee -key mode busy -key ring_ms 0 -key hangup remote -key hold_ms 0 \
    -key expect_user '*' -key expect_from '*' -key expect_media '*'
caller carrier_call.xml -key did +421233000111 -key caller +421905111222 -key hangup local \
    -key hold_ms 200 -key audio "$pcap" -key header "X-Vpbx-E2E: 1"
pair busy-fails-answered-call ok fail

if ((failures)); then
    echo "$failures pair(s) did not end as expected; logs in $logs"
    exit 1
fi
echo "all pairs ended as expected"
