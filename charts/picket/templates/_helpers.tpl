{{/*
Names. The fullname is the release name when it already holds the chart name (a release
called "picket" gives picket-ca and picket-injector), else <release>-picket.
*/}}
{{- define "picket.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "picket.caName" -}}
{{- printf "%s-ca" (include "picket.fullname" .) -}}
{{- end -}}

{{- define "picket.controllerName" -}}
{{- printf "%s-controller" (include "picket.fullname" .) -}}
{{- end -}}

{{- define "picket.injectorName" -}}
{{- printf "%s-injector" (include "picket.fullname" .) -}}
{{- end -}}

{{/* Labels on every object; the component is passed as .component. */}}
{{- define "picket.labels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/component: {{ .component }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- end -}}

{{- define "picket.selectorLabels" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* An image reference; a missing tag is the appVersion and `latest` is refused. */}}
{{- define "picket.imageRef" -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion -}}
{{- if eq $tag "latest" -}}
{{- fail "image tags must name a version: `latest` is refused" -}}
{{- end -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}

{{- define "picket.image" -}}
{{- include "picket.imageRef" (dict "image" .Values.image "root" .) -}}
{{- end -}}

{{- define "picket.sidecarImage" -}}
{{- include "picket.imageRef" (dict "image" .Values.sidecarImage "root" .) -}}
{{- end -}}

{{- define "picket.initImage" -}}
{{- include "picket.imageRef" (dict "image" .Values.initImage "root" .) -}}
{{- end -}}

{{/* The CA's URL inside the cluster; also its certificate's DNS name. */}}
{{- define "picket.caHost" -}}
{{- printf "%s.%s.svc" (include "picket.caName" .) .Release.Namespace -}}
{{- end -}}

{{- define "picket.caURL" -}}
{{- printf "https://%s:7443" (include "picket.caHost" .) -}}
{{- end -}}

{{/* The controller's SPIFFE ID (its --identity) and discovery address, as sidecars see them. */}}
{{- define "picket.controllerIdentity" -}}
{{- printf "spiffe://%s/ns/%s/sa/%s" .Values.trustDomain .Release.Namespace (include "picket.controllerName" .) -}}
{{- end -}}

{{- define "picket.controllerAddress" -}}
{{- printf "%s.%s.svc:7150" (include "picket.controllerName" .) .Release.Namespace -}}
{{- end -}}

{{- define "picket.injectorHost" -}}
{{- printf "%s.%s.svc" (include "picket.injectorName" .) .Release.Namespace -}}
{{- end -}}

{{/* The trust bundle, checked. */}}
{{- define "picket.trustBundle" -}}
{{- if not (contains "-----BEGIN CERTIFICATE-----" .Values.trustBundle) -}}
{{- fail "trustBundle must hold the mesh root certificate(s), PEM (see the chart README)" -}}
{{- end -}}
{{- .Values.trustBundle -}}
{{- end -}}

{{/* Namespaces that get the trust bundle and policy ConfigMaps: the release's own (the
injector reads the bundle there) and every meshed one. */}}
{{- define "picket.configNamespaces" -}}
{{- $namespaces := list .Release.Namespace -}}
{{- range .Values.mesh.namespaces -}}
{{- $namespaces = append $namespaces . -}}
{{- end -}}
{{- $namespaces | uniq | toJson -}}
{{- end -}}

{{/* Pod security context shared by the CA and the injector. */}}
{{- define "picket.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
fsGroup: 65532
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "picket.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* The settings `picket inject` and the injector share. */}}
{{- define "picket.injectArgs" -}}
- --image
- {{ include "picket.sidecarImage" . | quote }}
- --init-image
- {{ include "picket.initImage" . | quote }}
- --image-pull-policy
- {{ .Values.image.pullPolicy | quote }}
- --proxy-uid
- {{ .Values.proxy.uid | quote }}
- --ca-url
- {{ include "picket.caURL" . | quote }}
- --trust-domain
- {{ .Values.trustDomain | quote }}
- --token-audience
- {{ .Values.tokenAudience | quote }}
- --meshed-cidrs
- {{ join "," .Values.mesh.cidrs | quote }}
- --egress
- {{ .Values.mesh.egress | quote }}
- --proxy-cpu-request
- {{ .Values.proxy.resources.requests.cpu | quote }}
- --proxy-memory-request
- {{ .Values.proxy.resources.requests.memory | quote }}
- --inbound-mode
- {{ .Values.proxy.inboundMode | default "strict" | quote }}
- --rewrite-probes
- {{ ternary "true" "false" (ne .Values.proxy.rewriteProbes false) | quote }}
- --scrape-annotations
- {{ ternary "true" "false" .Values.metrics.scrapeAnnotations | quote }}
- --unmeshed
- {{ .Values.mesh.unmeshed | quote }}
{{- if .Values.controller.enabled }}
- --controller-address
- {{ include "picket.controllerAddress" . | quote }}
- --controller-identity
- {{ include "picket.controllerIdentity" . | quote }}
{{- end }}
{{- with .Values.proxy.excludeInboundPorts }}
- --exclude-inbound-ports
- {{ join "," . | quote }}
{{- end }}
{{- with .Values.proxy.excludeOutboundPorts }}
- --exclude-outbound-ports
- {{ join "," . | quote }}
{{- end }}
{{- with .Values.proxy.excludeOutboundCIDRs }}
- --exclude-outbound-cidrs
- {{ join "," . | quote }}
{{- end }}
{{- end -}}

{{/*
Placement shared by the CA and the injector: priority class and topology spread.
Call with (dict "root" . "component" "ca" "values" .Values.ca).
*/}}
{{- define "picket.placement" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . | quote }}
{{- end }}
{{- with .values.topologySpread }}
topologySpreadConstraints:
{{- range . }}
  - topologyKey: {{ .topologyKey | quote }}
    maxSkew: {{ .maxSkew }}
    whenUnsatisfiable: {{ .whenUnsatisfiable }}
    labelSelector:
      matchLabels:
        {{- include "picket.selectorLabels" (dict "root" $.root "component" $.component) | nindent 8 }}
    matchLabelKeys:
      - pod-template-hash
{{- end }}
{{- end }}
{{- end -}}
