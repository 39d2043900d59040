{{/*
Names. The PyTorchJob's name becomes the prefix of the pods and Services the Training Operator
creates (NAME-master-0, NAME-worker-12), and Service names must be DNS-1035 labels of at most 63
characters, so every name here is cut to 48 and must start with a letter.
*/}}
{{- define "r1v.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 48 | trimSuffix "-" }}
{{- end }}

{{- define "r1v.fullname" -}}
{{- $name := "" }}
{{- if .Values.fullnameOverride }}
{{- $name = .Values.fullnameOverride }}
{{- else if contains (default .Chart.Name .Values.nameOverride) .Release.Name }}
{{- $name = .Release.Name }}
{{- else }}
{{- $name = printf "%s-%s" .Release.Name (default .Chart.Name .Values.nameOverride) }}
{{- end }}
{{- $name = $name | trunc 48 | trimSuffix "-" }}
{{- if not (regexMatch "^[a-z]([-a-z0-9]*[a-z0-9])?$" $name) }}
{{- fail (printf "the name %q (from the release name or fullnameOverride) must be a DNS-1035 label: lower-case letters, digits and '-', starting with a letter; the Training Operator rejects anything else" $name) }}
{{- end }}
{{- $name }}
{{- end }}

{{/* The PyTorchJob, and so the operator's pod and Service prefix. */}}
{{- define "r1v.jobName" -}}
{{- include "r1v.fullname" . }}
{{- end }}

{{- define "r1v.runName" -}}
{{- default (include "r1v.fullname" .) .Values.runName }}
{{- end }}

{{- define "r1v.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every object carries; kubectl and Grafana select on app.kubernetes.io/instance. */}}
{{- define "r1v.labels" -}}
helm.sh/chart: {{ include "r1v.chart" . }}
{{ include "r1v.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: r1v
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "r1v.selectorLabels" -}}
app.kubernetes.io/name: {{ include "r1v.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Fixed layout of the shared volume (docs/architecture.md): every pod mounts it at /data. */}}
{{- define "r1v.dataRoot" -}}/data{{- end }}

{{- define "r1v.outputDir" -}}
{{- printf "%s/runs/%s" (include "r1v.dataRoot" .) (include "r1v.runName" .) }}
{{- end }}

{{- define "r1v.modelPath" -}}
{{- default (printf "%s/models/%s" (include "r1v.dataRoot" .) (base .Values.model.id)) .Values.model.path }}
{{- end }}

{{- define "r1v.datasetPath" -}}
{{- default (printf "%s/datasets/%s" (include "r1v.dataRoot" .) (base .Values.dataset.id)) .Values.dataset.path }}
{{- end }}

{{- define "r1v.superclevrDir" -}}
{{- default (printf "%s/datasets/superclevr" (include "r1v.dataRoot" .)) .Values.superclevr.dir }}
{{- end }}

{{- define "r1v.superclevrQuestions" -}}
{{- printf "%s/%s" (include "r1v.superclevrDir" .) (base .Values.superclevr.questionsUrl) }}
{{- end }}

{{/* One marker per release: a later release re-runs (cheap, idempotent) preparation for its own values. */}}
{{- define "r1v.dataPrepMarker" -}}
{{- printf "%s/.r1v-prep/%s.json" (include "r1v.dataRoot" .) (include "r1v.fullname" .) }}
{{- end }}

{{- define "r1v.claimName" -}}
{{- default (printf "%s-data" (include "r1v.fullname" .)) .Values.storage.existingClaim }}
{{- end }}

{{- define "r1v.recipeConfigMap" -}}
{{- printf "%s-recipe" (include "r1v.fullname" .) }}
{{- end }}

{{- define "r1v.evalServiceAccount" -}}
{{- printf "%s-eval" (include "r1v.fullname" .) }}
{{- end }}

{{- define "r1v.image" -}}
{{- printf "%s:%s" .image.repository (default .root.Chart.AppVersion .image.tag) }}
{{- end }}

{{- define "r1v.trainerImage" -}}
{{- include "r1v.image" (dict "image" .Values.image.trainer "root" .) }}
{{- end }}

{{- define "r1v.evaluatorImage" -}}
{{- include "r1v.image" (dict "image" .Values.image.evaluator "root" .) }}
{{- end }}

{{/* Hub access: trainer and evaluator read local paths only, so offline mode turns a wrong path into an error instead of a silent download. */}}
{{- define "r1v.hfEnv" -}}
- name: HF_HOME
  value: {{ include "r1v.dataRoot" . }}/hf-cache
{{- if .Values.offline }}
- name: HF_HUB_OFFLINE
  value: "1"
- name: HF_DATASETS_OFFLINE
  value: "1"
{{- end }}
- name: PYTHONUNBUFFERED
  value: "1"
{{- end }}

{{/* Both volumes every workload pod mounts: the shared data claim and a RAM-backed /dev/shm. */}}
{{- define "r1v.dataVolume" -}}
- name: data
  persistentVolumeClaim:
    claimName: {{ include "r1v.claimName" . }}
{{- end }}

{{/* The recipe directory: the chart's ConfigMap (DeepSpeed configs, default or inline recipe), or a user's ConfigMap projected in as recipe.yaml. */}}
{{- define "r1v.recipeVolume" -}}
- name: recipe
  projected:
    sources:
      - configMap:
          name: {{ include "r1v.recipeConfigMap" . }}
{{- with .Values.recipe.existingConfigMap }}
      - configMap:
          name: {{ . }}
          items:
            - key: {{ $.Values.recipe.existingConfigMapKey }}
              path: recipe.yaml
{{- end }}
{{- end }}

{{- define "r1v.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
The trainer's argument list. Only these recipe fields are overridden here (docs/architecture.md);
everything else comes from the recipe file.
*/}}
{{- define "r1v.trainerArgs" -}}
- -m
- r1v_job
- --config
- /etc/r1v/recipe.yaml
- --output_dir
- {{ include "r1v.outputDir" . }}
- --model_name_or_path
- {{ include "r1v.modelPath" . }}
- --dataset_name
- {{ include "r1v.datasetPath" . }}
{{- if ne .Values.trainer.deepspeed "none" }}
- --deepspeed
- /etc/r1v/{{ .Values.trainer.deepspeed }}.json
{{- end }}
- --metrics_port
- {{ .Values.monitoring.port | quote }}
{{- range .Values.trainer.extraArgs }}
- {{ . | quote }}
{{- end }}
{{- end }}

{{/*
One replica's pod template. Called with (dict "root" $ "role" "master"|"worker").
Master and Worker differ only in the metrics port: rank 0 (the master pod) alone serves /metrics.
*/}}
{{- define "r1v.trainerPodTemplate" -}}
{{- $root := .root }}
{{- $v := $root.Values }}
metadata:
  labels:
    {{- include "r1v.selectorLabels" $root | nindent 4 }}
    app.kubernetes.io/component: trainer
    {{- with $v.trainer.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $v.trainer.podAnnotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  # The trainer never talks to the API server.
  automountServiceAccountToken: false
  {{- include "r1v.imagePullSecrets" $root | nindent 2 }}
  {{- with $v.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if and $v.gangScheduling.enabled $v.gangScheduling.schedulerName }}
  schedulerName: {{ $v.gangScheduling.schedulerName }}
  {{- end }}
  {{- with $v.trainer.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  {{- $selector := deepCopy $v.trainer.nodeSelector }}
  {{- with $v.trainer.gpuProduct }}
  {{- $_ := set $selector "nvidia.com/gpu.product" . }}
  {{- end }}
  {{- with $selector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.trainer.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $v.trainer.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if $v.dataPrep.enabled }}
  initContainers:
    # Holds the pod until the data-prep Job has filled the volume; same image, so no extra pull.
    - name: wait-for-data
      image: {{ include "r1v.trainerImage" $root }}
      imagePullPolicy: {{ $v.image.trainer.pullPolicy }}
      command:
        - sh
        - -c
        - until [ -f "$MARKER" ]; do echo "waiting for $MARKER (data-prep Job)"; sleep 15; done
      env:
        - name: MARKER
          value: {{ include "r1v.dataPrepMarker" $root }}
      {{- with $v.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        requests:
          cpu: 10m
          memory: 16Mi
        limits:
          memory: 64Mi
      volumeMounts:
        - name: data
          mountPath: {{ include "r1v.dataRoot" $root }}
          readOnly: true
  {{- end }}
  containers:
    # The operator requires a container named "pytorch" and injects PET_* (read by torchrun) and
    # MASTER_ADDR/MASTER_PORT/WORLD_SIZE/RANK into it.
    - name: pytorch
      image: {{ include "r1v.trainerImage" $root }}
      imagePullPolicy: {{ $v.image.trainer.pullPolicy }}
      command:
        - torchrun
      args:
        {{- include "r1v.trainerArgs" $root | nindent 8 }}
      env:
        - name: R1V_RUN
          value: {{ include "r1v.runName" $root | quote }}
        {{- include "r1v.hfEnv" $root | nindent 8 }}
        {{- range $name, $value := $v.trainer.nccl }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
        {{- range $name, $value := $v.trainer.env }}
        - name: {{ $name }}
          value: {{ $value | quote }}
        {{- end }}
      ports:
        # Declared so the stored object matches what the operator's defaulter would add.
        - name: pytorchjob-port
          containerPort: {{ $v.trainer.masterPort }}
          protocol: TCP
        {{- if eq .role "master" }}
        - name: metrics
          containerPort: {{ $v.monitoring.port }}
          protocol: TCP
        {{- end }}
      {{- with $v.securityContext }}
      securityContext:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      resources:
        requests:
          {{- with $v.trainer.resources.requests }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
          nvidia.com/gpu: {{ $v.gpusPerNode }}
        limits:
          {{- with $v.trainer.resources.limits }}
          {{- toYaml . | nindent 10 }}
          {{- end }}
          nvidia.com/gpu: {{ $v.gpusPerNode }}
      volumeMounts:
        - name: data
          mountPath: {{ include "r1v.dataRoot" $root }}
        - name: recipe
          mountPath: /etc/r1v
          readOnly: true
        - name: dshm
          mountPath: /dev/shm
  volumes:
    {{- include "r1v.dataVolume" $root | nindent 4 }}
    {{- include "r1v.recipeVolume" $root | nindent 4 }}
    # NCCL and DataLoader workers exchange tensors through /dev/shm; the runtime's 64 MiB default is far too small.
    - name: dshm
      emptyDir:
        medium: Memory
        sizeLimit: {{ $v.trainer.shmSize }}
{{- end }}

{{/* "true" when the prometheus-operator objects (monitors, rules) render, else empty. */}}
{{- define "r1v.monitoringAPI" -}}
{{- if .Values.monitoring.enabled }}true{{ end }}
{{- end }}
